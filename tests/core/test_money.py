from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from core.money import (
    MoneyError,
    format_usd,
    parse_usd,
    percent_of,
    token_cost,
    usd_str,
)


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("2", 2_000_000_000),
        ("2.00", 2_000_000_000),
        ("0.1", 100_000_000),
        ("0.000000001", 1),
        (" 12.5 ", 12_500_000_000),
        ("999999999.999999999", 999_999_999_999_999_999),
    ],
)
def test_parse_usd_is_exact(text, nanos):
    assert parse_usd(text) == nanos


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("1e309", "below"),
        ("1E+1000000", "below"),
        ("-1E+999999999999", "below"),
        ("1e-1000000", "9 decimal"),
        ("0.0000000001", "9 decimal"),
        ("-1", "negative"),
        ("abc", "not a decimal"),
        ("", "not a decimal"),
        (0.1, "decimal strings"),
        (True, "decimal strings"),
        (None, "decimal strings"),
        ("1000000000", "below"),
        ("9" * 100, "not a decimal"),
    ],
)
def test_parse_usd_refuses_with_a_reason(value, reason):
    with pytest.raises(MoneyError, match=reason):
        parse_usd(value)


@given(st.one_of(st.text(max_size=80), st.decimals(allow_nan=True, allow_infinity=True), st.integers(),
                 st.from_regex(r"\A-?[0-9]{0,12}(\.[0-9]{0,14})?([eE][-+]?[0-9]{1,12})?\Z")))
def test_parse_usd_takes_any_value_or_says_why(value):
    # whatever a client sends in a money field, a MoneyError (a 400 naming the field) or an amount
    try:
        nanos = parse_usd(value, allow_negative=True)
    except MoneyError:
        return
    assert abs(nanos) < 1_000_000_000 * 1_000_000_000


def test_parse_negative_only_when_allowed():
    assert parse_usd("-1.5", allow_negative=True) == -1_500_000_000


@pytest.mark.parametrize(
    ("nanos", "text"),
    [(2_000_000_000, "2.00"), (1, "0.000000001"), (-1_500_000_000, "-1.50"), (0, "0.00"), (123_456_789, "0.123456789")],
)
def test_usd_str_round_trips(nanos, text):
    assert usd_str(nanos) == text
    assert parse_usd(text, allow_negative=True) == nanos


@pytest.mark.parametrize(
    ("nanos", "shown"),
    [(2_000_000_000, "$2.00"), (1_234_500_000_000, "$1,234.50"), (123_000, "$0.000123"), (0, "$0.00"), (-5_000_000_000, "-$5.00")],
)
def test_format_usd_for_people(nanos, shown):
    assert format_usd(nanos) == shown


@pytest.mark.parametrize(
    ("nanos", "percent", "result"),
    [
        (100, Decimal("5"), 5),
        (10, Decimal("5"), 0),  # 0.5 rounds half-even to 0
        (30, Decimal("5"), 2),  # 1.5 rounds half-even to 2
        (50, Decimal("5"), 2),  # 2.5 rounds half-even to 2
        (1_000_000_000, Decimal("12.34"), 123_400_000),
    ],
)
def test_percent_of_rounds_half_even(nanos, percent, result):
    assert percent_of(nanos, percent) == result


def test_percent_of_refuses_floats():
    with pytest.raises(TypeError):
        percent_of(100, 5.0)


def test_token_cost_per_million():
    # 10 tokens at $0.15 per million tokens = $0.0000015 = 1,500 nanodollars.
    assert token_cost(10, parse_usd("0.15")) == 1_500
    # 1 token at $0.0000005/M is 0.0000000000005 USD: rounds to 0.
    assert token_cost(1, parse_usd("0.0000005")) == 0
