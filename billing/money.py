"""Money: integer nanodollars (1e-9 USD), and the one place that does arithmetic on them.

Why integers: Django sums decimals on SQLite through floats, so a Decimal
column would not be exact on the embedded default. A nanodollar is fine-grained
enough for 5% of a ten-token request. Amounts are parsed from decimal strings
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
    if abs(amount) >= MAX_USD:
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
