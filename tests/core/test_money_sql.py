"""The SQL forms of the rounding rules agree with the Python ones, in PostgreSQL."""

from decimal import Decimal

import pytest
from django.db import connection
from hypothesis import given, settings
from hypothesis import strategies as st

from core.money import (
    MAX_SQL_PRICE,
    MAX_SQL_TOKENS,
    ONE_MILLION,
    basis_points_of_sql,
    percent_of,
    percent_of_sql,
    token_cost,
    token_cost_sql,
)

pytestmark = pytest.mark.django_db


def _evaluate(expression: str, **values: int) -> int:
    """The expression over columns of a one-row derived table (the expressions repeat their operands)."""
    columns = ", ".join(f"CAST(%s AS BIGINT) AS {name}" for name in values)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {expression} FROM (SELECT {columns}) v", list(values.values()))
        return cursor.fetchone()[0]


def _token_cost_in_sql(tokens: int, price: int) -> int:
    return _evaluate(token_cost_sql("v.tokens", "v.price"), tokens=tokens, price=price)


@pytest.mark.parametrize(
    ("tokens", "price"),
    [
        (0, 0),
        (1, 500_000),  # exactly half a nanodollar: to even, 0
        (3, 500_000),  # 1.5: to even, 2
        (5, 500_000),  # 2.5: to even, 2
        (1, 500_001),  # just above half: 1
        (7, 1_999_999),
        (10, 1_000),  # $0.001 per million tokens
        (MAX_SQL_TOKENS, MAX_SQL_PRICE),  # the largest inputs stay inside 64 bits
        (MAX_SQL_TOKENS, MAX_SQL_PRICE - 1),
        (123_456, 37_500_000),  # $0.0375 per million: 37.5 nanodollars a token
    ],
)
def test_token_cost_sql_matches_token_cost(tokens, price):
    assert _token_cost_in_sql(tokens, price) == token_cost(tokens, price)


@settings(max_examples=150, deadline=None)
@given(tokens=st.integers(0, MAX_SQL_TOKENS), price=st.integers(0, MAX_SQL_PRICE))
def test_token_cost_sql_matches_token_cost_everywhere(tokens, price):
    assert _token_cost_in_sql(tokens, price) == token_cost(tokens, price)


@settings(max_examples=50, deadline=None)
@given(tokens=st.integers(0, 10_000), price=st.integers(0, 3 * ONE_MILLION))
def test_token_cost_sql_rounds_small_amounts_half_even(tokens, price):
    assert _token_cost_in_sql(tokens, price) == token_cost(tokens, price)


@settings(max_examples=150, deadline=None)
@given(
    nanos=st.integers(0, 2**63 - 1),
    percent=st.sampled_from([Decimal("5"), Decimal("2.5"), Decimal("0"), Decimal("100"), Decimal("33.33")]),
)
def test_percent_of_sql_matches_percent_of(nanos, percent):
    assert _evaluate(percent_of_sql("v.nanos", percent), nanos=nanos) == percent_of(nanos, percent)


@settings(max_examples=150, deadline=None)
@given(nanos=st.integers(0, 2**63 - 1), basis_points=st.integers(0, 10_000))
def test_basis_points_of_sql_matches_percent_of_for_a_rate_per_row(nanos, basis_points):
    # The exchange earning's form: the rate is a column (pool_settle's s.rate_bp), not a literal.
    expected = percent_of(nanos, Decimal(basis_points) / 100)
    assert _evaluate(basis_points_of_sql("v.nanos", "v.bp"), nanos=nanos, bp=basis_points) == expected


@pytest.mark.parametrize(("nanos", "expected"), [(10, 0), (30, 2), (50, 2), (70, 4), (11, 1)])
def test_percent_of_sql_rounds_half_even(nanos, expected):
    # 5% of 10 is 0.5 → 0; of 30, 1.5 → 2; of 50, 2.5 → 2; of 70, 3.5 → 4; of 11, 0.55 → 1
    assert _evaluate(percent_of_sql("v.nanos", Decimal("5")), nanos=nanos) == expected


@pytest.mark.parametrize("percent", [Decimal("2.555"), Decimal("-1"), Decimal("101")])
def test_percent_of_sql_refuses_what_it_cannot_compute_exactly(percent):
    with pytest.raises(ValueError):
        percent_of_sql("1", percent)
