"""Money: integer nanodollars (1e-9 USD), and the one place that does arithmetic on them.

Why integers: exact in Python and in PostgreSQL alike (bigint sums and
compares without rounding, and is cheaper than numeric on the hot path). A
nanodollar is fine-grained enough for 5% of a ten-token request. Amounts are parsed from decimal strings
only (a float is already inexact), rounded half-even to the nanodollar, and
rendered as decimal strings for APIs and as "$1.23" for people.
"""

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

NANOS_PER_USD = 1_000_000_000
NANO = Decimal("0.000000001")
MAX_USD = Decimal("1000000000")  # one billion dollars: far above any real amount, far below BigInteger's range
ONE_MILLION = 1_000_000

MONEY_NOT_A_STRING = "Amounts must be decimal strings such as \"12.50\"."
MONEY_NOT_A_NUMBER = "\"{value}\" is not a decimal amount."
MONEY_NOT_FINITE = "Amounts must be finite numbers."
MONEY_TOO_PRECISE = "Amounts have at most 9 decimal places (one nanodollar)."
MONEY_TOO_LARGE = "Amounts must be below $1,000,000,000."
MONEY_NEGATIVE = "Amounts must not be negative."


class MoneyError(ValueError):
    """An amount that cannot be taken as money. The message is safe to show."""


def parse_usd(value: str | Decimal | int, *, allow_negative: bool = False) -> int:
    """Parse a USD amount into nanodollars, exactly, or raise MoneyError.

    Accepts decimal strings ("12.5", "0.000000001"), Decimals and ints; refuses
    floats, NaN, infinities, exponents beyond range and more than 9 decimals
    (refusing rather than rounding: a payment amount is taken as written).
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise MoneyError(MONEY_NOT_A_STRING)
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > 64:
            raise MoneyError(MONEY_NOT_A_NUMBER.format(value=text[:16] + "…"))
        try:
            amount = Decimal(text)
        except InvalidOperation:
            raise MoneyError(MONEY_NOT_A_NUMBER.format(value=text)) from None
    else:
        raise MoneyError(MONEY_NOT_A_STRING)
    if not amount.is_finite():
        raise MoneyError(MONEY_NOT_FINITE)
    # copy_abs, not abs(): abs() rounds to the context and overflows on "1E+1000000".
    if amount.copy_abs() >= MAX_USD:
        raise MoneyError(MONEY_TOO_LARGE)
    if amount != amount.quantize(NANO, rounding=ROUND_HALF_EVEN):
        raise MoneyError(MONEY_TOO_PRECISE)
    if amount < 0 and not allow_negative:
        raise MoneyError(MONEY_NEGATIVE)
    return int(amount * NANOS_PER_USD)


def round_nanos(value: Decimal) -> int:
    """Round an exact Decimal number of nanodollars half-even to an integer."""
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def usd(nanos: int) -> Decimal:
    """The exact Decimal USD value of an amount."""
    return (Decimal(nanos) / NANOS_PER_USD).quantize(NANO)


def usd_str(nanos: int) -> str:
    """Decimal-string USD for APIs: exact, at least two decimals, no trailing zeros beyond them.

    >>> usd_str(2_000_000_000), usd_str(1), usd_str(-1_500_000_000)
    ('2.00', '0.000000001', '-1.50')
    """
    text = f"{usd(nanos):f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{whole}.{fraction}"


def format_usd(nanos: int) -> str:
    """For people: "$1,234.50"; sub-cent amounts keep their significant digits ("$0.000123")."""
    sign = "-" if nanos < 0 else ""
    magnitude = abs(nanos)
    if magnitude and magnitude < NANOS_PER_USD // 100:
        return f"{sign}${usd_str(magnitude)}"
    cents = usd(magnitude).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    return f"{sign}${cents:,.2f}"


def percent_of(nanos: int, percent: Decimal) -> int:
    """`percent` % of an amount, rounded half-even to the nanodollar (5% → Decimal("5"))."""
    if not isinstance(percent, Decimal):
        raise TypeError("percent must be a Decimal")
    return round_nanos(Decimal(nanos) * percent / 100)


def token_cost(tokens: int, usd_per_million_nanos: int) -> int:
    """Cost of `tokens` at a price given in nanodollars per million tokens, half-even."""
    return round_nanos(Decimal(tokens) * Decimal(usd_per_million_nanos) / ONE_MILLION)


# --- the same rules in SQL ------------------------------------------------------------------------
# The gateway reserves a request's worst case inside its first database statement (pool.hotpath),
# where the prices are read, so the rounding rule must exist in SQL too; it is written here, next to the
# Python it mirrors, and tests/billing/test_money_sql.py checks the two agree. Integer arithmetic only
# (PostgreSQL's round() on numeric rounds half away from zero, not half-even, and bigint is cheaper
# than numeric), arranged so that no product leaves 64 bits for the ranges the gateway validates:
# tokens up to 2**31 - 1 and prices up to $4,000,000 per million tokens (MAX_SQL_TOKENS,
# MAX_SQL_PRICE); percent_of_sql takes any amount.

MAX_SQL_TOKENS = 2**31 - 1
MAX_SQL_PRICE = 4_000_000 * NANOS_PER_USD  # nanodollars per million tokens


def _half_even_sql(whole: str, numerator: str, denominator: int) -> str:
    """`whole + numerator / denominator`, half-even to an integer; all three non-negative integers."""
    quotient = f"(({whole}) + ({numerator}) / {denominator})"
    twice_rest = f"(2 * (({numerator}) - ({numerator}) / {denominator} * {denominator}))"
    return (
        f"({quotient} + CASE WHEN {twice_rest} > {denominator} OR ({twice_rest} = {denominator}"
        f" AND {quotient} - {quotient} / 2 * 2 = 1) THEN 1 ELSE 0 END)"
    )


def token_cost_sql(tokens: str, usd_per_million_nanos: str) -> str:
    """token_cost() as an SQL expression over two integer expressions (column names, placeholders).

    price × tokens / 1M is split as tokens × (price div 1M) + tokens × (price mod 1M) / 1M so that no
    product overflows 64 bits.
    """
    t, p = f"({tokens})", f"({usd_per_million_nanos})"
    per_token = f"({p} / {ONE_MILLION})"
    rest = f"({p} - {per_token} * {ONE_MILLION})"
    return _half_even_sql(f"{t} * {per_token}", f"{t} * {rest}", ONE_MILLION)


def percent_of_sql(nanos: str, percent: Decimal) -> str:
    """percent_of() as an SQL expression over an integer expression; `percent` has at most two decimals."""
    basis_points = percent * 100
    if basis_points != basis_points.to_integral_value() or not 0 <= basis_points <= 10_000:
        raise ValueError("an SQL percentage is between 0 and 100 with at most two decimals")
    return basis_points_of_sql(nanos, str(int(basis_points)))


def basis_points_of_sql(nanos: str, basis_points: str) -> str:
    """percent_of() as an SQL expression over two non-negative integer expressions: an amount and the
    percentage in basis points (0 to 10,000; 12.5% is 1250), for a percentage that varies per row (an
    exchange earning's rate, inside pool_settle's frozen text)."""
    bp, n = f"({basis_points})", f"({nanos})"
    hundreds = f"({n} / 10000)"
    return _half_even_sql(f"{hundreds} * {bp}", f"({n} - {hundreds} * 10000) * {bp}", 10_000)
