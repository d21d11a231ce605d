"""Parse providers' balance-API replies into one exact reading.

Why this exists: the exchange admits a key only with a verified provider balance (SPEC: >= $0.10) and
re-checks it periodically, so the number must be exact and the parser must fail closed. Any reply that
is not fully understood raises ``BalanceParseError``; it never yields a guessed amount. Amounts become
``Decimal`` from the reply's text (``parse_float=Decimal``), never through a binary float.

Replies and error bodies can echo fragments of the key, so error messages name what was missing or
wrong and never quote the payload.

Pure: no Django, no I/O. The caller GETs ``provider.base_url + BALANCE_PATHS[kind]`` with the key as a
Bearer token and passes the body here.

Kinds and what the reading means:

- ``deepseek`` (``/user/balance``): ``total_balance`` of the entry in the requested currency, else USD,
  else the first entry; ``is_available`` is the provider's own flag and a positive amount.
- ``openrouter`` (``/key``): the key's ``limit_remaining``. A key without a spending limit reports
  ``limit_remaining: null``; its spendable amount is the account's credit, which ``/key`` does not report,
  so ``parse_balance`` raises ``FollowUpRequired`` (a ``BalanceParseError``) naming the kind
  ``openrouter_credits`` and its path ``/credits``. Callers that do not handle it fail closed. OpenRouter
  documents ``/credits`` as needing a management key, so an ordinary key may get 403 there: the key then
  cannot be measured and must not join the exchange.
- ``openrouter_credits`` (``/credits``): ``total_credits - total_usage``.
- ``moonshot`` (``/users/me/balance``): ``available_balance`` (cash + vouchers; <= 0 blocks inference).
  The reply carries no currency: api.moonshot.ai bills in USD, api.moonshot.cn in CNY, so the caller passes
  the provider's configured currency.
- ``siliconflow`` (``/user/info``): ``totalBalance`` (granted ``balance`` + paid ``chargeBalance``). No currency
  in the reply either: api.siliconflow.com is taken as USD, api.siliconflow.cn as CNY.

Negative amounts are reported as they are (Moonshot's cash balance can go negative, an OpenRouter key can
overrun its limit) with ``is_available=False``; the caller's threshold check then refuses them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

BALANCE_PATHS: Mapping[str, str] = {
    "deepseek": "/user/balance",
    "openrouter": "/key",
    "openrouter_credits": "/credits",
    "moonshot": "/users/me/balance",
    "siliconflow": "/user/info",
}
OPENROUTER_CREDITS_KIND = "openrouter_credits"
DEFAULT_CURRENCY = "USD"

MAX_PAYLOAD_BYTES = 64 * 1024
# Providers send plain decimals ("110.00"); anything else (exponents, "1_000", " 5", "NaN") is refused.
_AMOUNT_TEXT = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,18})?")
_MAX_AMOUNT = Decimal(10) ** 15
_CURRENCY = re.compile(r"[A-Z]{3}")

UNKNOWN_KIND = "unknown balance kind {kind!r} (known: {known})"
NOT_JSON = "{kind} balance reply is not valid JSON"
NOT_UTF8 = "{kind} balance reply is not UTF-8 text"
TOO_LARGE = "{kind} balance reply is larger than {limit} bytes"
NOT_OBJECT = "{kind} balance reply: {where} is not a JSON object"
MISSING = "{kind} balance reply: required field {field!r} is missing"
BAD_AMOUNT = "{kind} balance reply: {field!r} is not a decimal amount"
OUT_OF_RANGE = "{kind} balance reply: {field!r} is out of range"
BAD_FLAG = "{kind} balance reply: {field!r} is not a boolean"
BAD_STATUS = "{kind} balance reply: provider reported failure ({field!r} is not {expected!r})"
BAD_CURRENCY = "{kind} balance reply: currency is not a 3-letter code"
NO_ENTRIES = "{kind} balance reply: 'balance_infos' has no usable entries"
NEEDS_FOLLOW_UP = "openrouter key has no spending limit; read {path} for the account's credits"


class BalanceParseError(ValueError):
    """The reply was malformed or not what the provider documents. The message never quotes it."""


class FollowUpRequired(BalanceParseError):
    """The reply is valid but does not hold the balance; fetch ``path`` and parse it as ``kind``."""

    def __init__(self, kind: str, path: str) -> None:
        super().__init__(NEEDS_FOLLOW_UP.format(path=path))
        self.kind = kind
        self.path = path


@dataclass(frozen=True)
class BalanceReading:
    amount: Decimal
    currency: str
    is_available: bool


def parse_balance(
    kind: str, payload: bytes | str | Mapping[str, Any], *, currency: str | None = None
) -> BalanceReading:
    """Parse one balance reply of ``kind`` (a key of ``BALANCE_PATHS``).

    ``currency`` is the provider's configured balance currency: a preference for DeepSeek (which
    reports per currency), the reading's currency for Moonshot and SiliconFlow (which report none);
    OpenRouter is always USD. Raises ``BalanceParseError`` on anything unexpected.
    """
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ValueError(UNKNOWN_KIND.format(kind=kind, known=", ".join(sorted(_PARSERS))))
    wanted = currency or DEFAULT_CURRENCY
    if not _CURRENCY.fullmatch(wanted):
        raise ValueError(f"currency must be a 3-letter code, got {wanted!r}")
    return parser(kind, _load(kind, payload), wanted)


def _load(kind: str, payload: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(payload, Mapping):
        return payload
    if isinstance(payload, (bytes, bytearray)):
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise BalanceParseError(TOO_LARGE.format(kind=kind, limit=MAX_PAYLOAD_BYTES))
        try:
            payload = bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            raise BalanceParseError(NOT_UTF8.format(kind=kind)) from None
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BalanceParseError(TOO_LARGE.format(kind=kind, limit=MAX_PAYLOAD_BYTES))
    try:
        data = json.loads(payload, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise BalanceParseError(NOT_JSON.format(kind=kind)) from None
    return _object(kind, data, "the top level")


def _reject_constant(name: str) -> Any:
    raise ValueError("NaN and Infinity are not amounts")


def _object(kind: str, value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BalanceParseError(NOT_OBJECT.format(kind=kind, where=where))
    return value


def _field(kind: str, obj: Mapping[str, Any], name: str) -> Any:
    if name not in obj:
        raise BalanceParseError(MISSING.format(kind=kind, field=name))
    return obj[name]


def _amount(kind: str, value: Any, name: str) -> Decimal:
    if isinstance(value, str):
        if not _AMOUNT_TEXT.fullmatch(value):
            raise BalanceParseError(BAD_AMOUNT.format(kind=kind, field=name))
        amount = Decimal(value)
    elif isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise BalanceParseError(BAD_AMOUNT.format(kind=kind, field=name))
    else:
        try:  # float only when the caller decoded JSON itself; repr() is the shortest exact text
            amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        except InvalidOperation:
            raise BalanceParseError(BAD_AMOUNT.format(kind=kind, field=name)) from None
    if not amount.is_finite() or abs(amount) >= _MAX_AMOUNT:
        raise BalanceParseError(OUT_OF_RANGE.format(kind=kind, field=name))
    return amount


def _flag(kind: str, value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise BalanceParseError(BAD_FLAG.format(kind=kind, field=name))
    return value


def _expect(kind: str, obj: Mapping[str, Any], name: str, expected: Any) -> None:
    value = _field(kind, obj, name)
    if type(value) is not type(expected) or value != expected:
        raise BalanceParseError(BAD_STATUS.format(kind=kind, field=name, expected=expected))


def _deepseek(kind: str, data: Mapping[str, Any], wanted: str) -> BalanceReading:
    available = _flag(kind, _field(kind, data, "is_available"), "is_available")
    infos = _field(kind, data, "balance_infos")
    if not isinstance(infos, list) or not infos:
        raise BalanceParseError(NO_ENTRIES.format(kind=kind))
    entries: dict[str, Decimal] = {}
    for raw in infos:
        info = _object(kind, raw, "a 'balance_infos' entry")
        code = _field(kind, info, "currency")
        if not isinstance(code, str) or not _CURRENCY.fullmatch(code):
            raise BalanceParseError(BAD_CURRENCY.format(kind=kind))
        entries.setdefault(code, _amount(kind, _field(kind, info, "total_balance"), "total_balance"))
    code = next(c for c in (wanted, DEFAULT_CURRENCY, next(iter(entries))) if c in entries)
    return BalanceReading(entries[code], code, available and entries[code] > 0)


def _openrouter_key(kind: str, data: Mapping[str, Any], wanted: str) -> BalanceReading:
    body = _object(kind, _field(kind, data, "data"), "'data'")
    remaining = _field(kind, body, "limit_remaining")
    if remaining is None:
        raise FollowUpRequired(OPENROUTER_CREDITS_KIND, BALANCE_PATHS[OPENROUTER_CREDITS_KIND])
    amount = _amount(kind, remaining, "limit_remaining")
    return BalanceReading(amount, "USD", amount > 0)


def _openrouter_credits(kind: str, data: Mapping[str, Any], wanted: str) -> BalanceReading:
    body = _object(kind, _field(kind, data, "data"), "'data'")
    credits = _amount(kind, _field(kind, body, "total_credits"), "total_credits")
    used = _amount(kind, _field(kind, body, "total_usage"), "total_usage")
    amount = credits - used
    return BalanceReading(amount, "USD", amount > 0)


def _moonshot(kind: str, data: Mapping[str, Any], wanted: str) -> BalanceReading:
    _expect(kind, data, "code", 0)
    _expect(kind, data, "status", True)
    body = _object(kind, _field(kind, data, "data"), "'data'")
    amount = _amount(kind, _field(kind, body, "available_balance"), "available_balance")
    return BalanceReading(amount, wanted, amount > 0)


def _siliconflow(kind: str, data: Mapping[str, Any], wanted: str) -> BalanceReading:
    _expect(kind, data, "code", 20000)
    _expect(kind, data, "status", True)
    body = _object(kind, _field(kind, data, "data"), "'data'")
    amount = _amount(kind, _field(kind, body, "totalBalance"), "totalBalance")
    # An account the provider has flagged (status other than "normal") cannot spend its balance.
    normal = body.get("status", "normal") == "normal"
    return BalanceReading(amount, wanted, normal and amount > 0)


_PARSERS = {
    "deepseek": _deepseek,
    "openrouter": _openrouter_key,
    "openrouter_credits": _openrouter_credits,
    "moonshot": _moonshot,
    "siliconflow": _siliconflow,
}
