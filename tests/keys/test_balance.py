"""keys/balance.py: every documented reply shape parses exactly; anything else fails closed."""

from __future__ import annotations

import json
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from keys.balance import (
    BALANCE_PATHS,
    BalanceParseError,
    BalanceReading,
    FollowUpRequired,
    parse_balance,
)

SECRET = "sk-live-DO-NOT-LEAK-1234"

# The providers' documented example replies (DeepSeek, OpenRouter, Moonshot, SiliconFlow docs).
DEEPSEEK = {
    "is_available": True,
    "balance_infos": [
        {"currency": "CNY", "total_balance": "110.00", "granted_balance": "10.00", "topped_up_balance": "100.00"}
    ],
}
OPENROUTER_KEY = {
    "data": {
        "label": "sk-or-v1-116...0ce",
        "limit": 5,
        "usage": 0.1015644762,
        "is_provisioning_key": False,
        "limit_remaining": 4.8984355238,
        "is_free_tier": False,
        "rate_limit": {"requests": 50, "interval": "10s"},
    }
}
OPENROUTER_CREDITS = {"data": {"total_credits": 100.5, "total_usage": 25.75}}
MOONSHOT = {
    "code": 0,
    "data": {"available_balance": 49.58894, "voucher_balance": 46.58893, "cash_balance": 3.00001},
    "scode": "0x0",
    "status": True,
}
SILICONFLOW = {
    "code": 20000,
    "message": "OK",
    "status": True,
    "data": {
        "id": "userid",
        "name": "username",
        "image": "user_avatar_image_url",
        "email": "user_email_address",
        "isAdmin": False,
        "balance": "0.88",
        "status": "normal",
        "introduction": "user_introduction",
        "role": "user_role",
        "chargeBalance": "88.00",
        "totalBalance": "88.88",
    },
}


def _bytes(obj: object) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("kind", "payload", "currency", "expected"),
    [
        ("deepseek", DEEPSEEK, "CNY", BalanceReading(Decimal("110.00"), "CNY", True)),
        ("openrouter", OPENROUTER_KEY, None, BalanceReading(Decimal("4.8984355238"), "USD", True)),
        ("openrouter_credits", OPENROUTER_CREDITS, None, BalanceReading(Decimal("74.75"), "USD", True)),
        ("moonshot", MOONSHOT, "USD", BalanceReading(Decimal("49.58894"), "USD", True)),
        ("moonshot", MOONSHOT, "CNY", BalanceReading(Decimal("49.58894"), "CNY", True)),
        ("siliconflow", SILICONFLOW, None, BalanceReading(Decimal("88.88"), "USD", True)),
    ],
)
@pytest.mark.parametrize("encode", [_bytes, lambda o: json.dumps(o), lambda o: o], ids=["bytes", "str", "dict"])
def test_documented_replies_parse_exactly(kind, payload, currency, expected, encode):
    # given a reply exactly as the provider documents it, as bytes, text or an already-decoded dict
    # when it is parsed
    reading = parse_balance(kind, encode(payload), currency=currency)
    # then the amount is the exact decimal the provider wrote, not a float approximation
    assert reading == expected
    assert isinstance(reading.amount, Decimal)


def test_float_amounts_keep_their_written_digits():
    # given a JSON float that binary floating point cannot represent exactly
    payload = b'{"data": {"total_credits": 0.3, "total_usage": 0.1}}'
    # when parsed, then the subtraction is done on the written digits
    assert parse_balance("openrouter_credits", payload).amount == Decimal("0.2")


@pytest.mark.parametrize(
    ("infos", "wanted", "amount", "currency"),
    [
        ([("CNY", "70.00"), ("USD", "10.00")], "USD", "10.00", "USD"),
        ([("CNY", "70.00"), ("USD", "10.00")], "CNY", "70.00", "CNY"),
        ([("CNY", "70.00"), ("USD", "10.00")], "EUR", "10.00", "USD"),  # falls back to USD
        ([("CNY", "70.00")], "USD", "70.00", "CNY"),  # only CNY: reported as CNY, never relabelled
    ],
)
def test_deepseek_picks_the_wanted_currency_then_usd_then_first(infos, wanted, amount, currency):
    payload = {
        "is_available": True,
        "balance_infos": [
            {"currency": c, "total_balance": a, "granted_balance": "0", "topped_up_balance": a} for c, a in infos
        ],
    }
    assert parse_balance("deepseek", payload, currency=wanted) == BalanceReading(Decimal(amount), currency, True)


def test_deepseek_unavailable_flag_is_respected():
    payload = dict(DEEPSEEK, is_available=False)
    assert parse_balance("deepseek", payload, currency="CNY").is_available is False


def test_openrouter_unlimited_key_asks_for_credits_lookup():
    # given a key without a spending limit
    payload = {"data": dict(OPENROUTER_KEY["data"], limit=None, limit_remaining=None)}
    # when parsed, then the caller is told where the real balance lives
    with pytest.raises(FollowUpRequired) as excinfo:
        parse_balance("openrouter", payload)
    assert (excinfo.value.kind, excinfo.value.path) == ("openrouter_credits", "/credits")
    assert BALANCE_PATHS[excinfo.value.kind] == excinfo.value.path
    # and a caller that only catches BalanceParseError fails closed
    assert isinstance(excinfo.value, BalanceParseError)


@pytest.mark.parametrize(
    ("kind", "payload", "amount"),
    [
        ("moonshot", {**MOONSHOT, "data": {**MOONSHOT["data"], "available_balance": -3.5}}, "-3.5"),
        ("openrouter", {"data": {**OPENROUTER_KEY["data"], "limit_remaining": -0.01}}, "-0.01"),
        ("siliconflow", {**SILICONFLOW, "data": {**SILICONFLOW["data"], "totalBalance": "0.00"}}, "0.00"),
        ("deepseek", {"is_available": True, "balance_infos": [{"currency": "USD", "total_balance": "-1.00"}]}, "-1.00"),
        ("openrouter_credits", {"data": {"total_credits": 5, "total_usage": 7.5}}, "-2.5"),
    ],
)
def test_zero_and_negative_balances_are_reported_but_not_available(kind, payload, amount):
    reading = parse_balance(kind, payload)
    assert reading.amount == Decimal(amount)
    assert reading.is_available is False


def test_siliconflow_flagged_account_is_not_available():
    payload = {**SILICONFLOW, "data": {**SILICONFLOW["data"], "status": "frozen"}}
    assert parse_balance("siliconflow", payload).is_available is False


def _drop(obj: dict, *path: str) -> dict:
    """A deep copy of ``obj`` without the field at ``path``."""
    copy = json.loads(json.dumps(obj))
    node = copy
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return copy


@pytest.mark.parametrize(
    ("kind", "payload", "fragment"),
    [
        ("deepseek", _drop(DEEPSEEK, "is_available"), "'is_available' is missing"),
        ("deepseek", _drop(DEEPSEEK, "balance_infos"), "'balance_infos' is missing"),
        ("deepseek", {"is_available": True, "balance_infos": []}, "no usable entries"),
        ("deepseek", {"is_available": True, "balance_infos": [{"total_balance": "1"}]}, "'currency' is missing"),
        ("deepseek", {"is_available": True, "balance_infos": [{"currency": "USD"}]}, "'total_balance' is missing"),
        ("deepseek", {"is_available": "yes", "balance_infos": DEEPSEEK["balance_infos"]}, "not a boolean"),
        ("deepseek", {"is_available": True, "balance_infos": [{"currency": "usd$", "total_balance": "1"}]}, "3-letter"),
        ("openrouter", {}, "'data' is missing"),
        ("openrouter", {"data": []}, "not a JSON object"),
        ("openrouter", _drop(OPENROUTER_KEY, "data", "limit_remaining"), "'limit_remaining' is missing"),
        ("openrouter_credits", _drop(OPENROUTER_CREDITS, "data", "total_usage"), "'total_usage' is missing"),
        ("moonshot", _drop(MOONSHOT, "data", "available_balance"), "'available_balance' is missing"),
        ("moonshot", {**MOONSHOT, "code": 1}, "provider reported failure"),
        ("moonshot", {**MOONSHOT, "status": False}, "provider reported failure"),
        ("moonshot", {**MOONSHOT, "code": "0"}, "provider reported failure"),
        ("siliconflow", _drop(SILICONFLOW, "data", "totalBalance"), "'totalBalance' is missing"),
        ("siliconflow", {**SILICONFLOW, "code": 40001}, "provider reported failure"),
        ("siliconflow", _drop(SILICONFLOW, "data"), "'data' is missing"),
    ],
)
def test_missing_or_unexpected_fields_fail_closed(kind, payload, fragment):
    with pytest.raises(BalanceParseError, match=fragment):
        parse_balance(kind, payload)


@pytest.mark.parametrize(
    "amount",
    [
        *["abc", "", " 5", "5 ", "1_000", "1e3", "NaN", "Infinity", "0x10", "1.2.3", "+5", "١٢", "9" * 16],
        *[True, None, [], {}],
    ],
)
def test_garbage_amounts_are_refused(amount):
    payload = {**SILICONFLOW, "data": {**SILICONFLOW["data"], "totalBalance": amount}}
    with pytest.raises(BalanceParseError, match="totalBalance"):
        parse_balance("siliconflow", payload)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"data": {"total_credits": NaN, "total_usage": 0}}',
        b'{"data": {"total_credits": Infinity, "total_usage": 0}}',
        b'{"data": {"total_credits": 1e400, "total_usage": 0}}',
        b'{"data": {"total_credits": 10000000000000000, "total_usage": 0}}',
    ],
)
def test_non_finite_or_absurd_json_numbers_are_refused(raw):
    with pytest.raises(BalanceParseError):
        parse_balance("openrouter_credits", raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b'{"is_available": tru, "balance_infos": [',
        b"[1, 2, 3]",
        b'"just a string"',
        b"\xff\xfe\x00garbage",
        b"[" * 100_000,
        b" " * (64 * 1024 + 1),
    ],
)
def test_malformed_payloads_raise_balance_parse_error(raw):
    with pytest.raises(BalanceParseError):
        parse_balance("deepseek", raw)


def test_error_messages_never_quote_the_payload():
    # given replies that echo the key, as real providers' replies may
    replies = [
        f'{{"error": {{"message": "Incorrect API key provided: {SECRET}"}}}}',
        f'{{"is_available": true, "balance_infos": [{{"currency": "USD", "total_balance": "{SECRET}"}}]}}',
        f'{{"is_available": true, "balance_infos": [{{"currency": "{SECRET}", "total_balance": "1"}}]}}',
        f"garbage {SECRET}",
    ]
    for raw in replies:
        # when parsing fails, then the message describes the problem without the secret
        with pytest.raises(BalanceParseError) as excinfo:
            parse_balance("deepseek", raw)
        assert SECRET not in str(excinfo.value)
        assert "DO-NOT-LEAK" not in repr(excinfo.value)


def test_unknown_kind_is_a_programming_error_not_a_parse_error():
    with pytest.raises(ValueError, match="unknown balance kind") as excinfo:
        parse_balance("none", DEEPSEEK)
    assert not isinstance(excinfo.value, BalanceParseError)


def test_invalid_currency_argument_is_refused():
    with pytest.raises(ValueError, match="3-letter"):
        parse_balance("moonshot", MOONSHOT, currency="usd")


def test_reading_is_frozen():
    reading = parse_balance("siliconflow", SILICONFLOW)
    with pytest.raises(AttributeError):
        reading.amount = Decimal("1")  # type: ignore[misc]


# --- the catalogue (keys/providers.toml) agrees with this module --------------------------------

CATALOGUE = tomllib.loads((Path(__file__).resolve().parents[2] / "keys" / "providers.toml").read_text())["providers"]


@pytest.mark.parametrize("provider", CATALOGUE, ids=[p["slug"] for p in CATALOGUE])
def test_catalogue_balance_settings_match_the_parsers(provider):
    assert provider["base_url"].startswith("https://")
    assert provider["api_style"] == "openai"
    assert provider["pool_clearance"] == "pending"
    if provider["balance_api"] == "none":
        assert provider["balance_path"] == ""
        assert provider["exchange_supported"] is False
    else:
        assert provider["balance_path"] == BALANCE_PATHS[provider["balance_api"]]
        assert provider["exchange_supported"] is True


def test_catalogue_price_ids_exist_in_genai_prices():
    from genai_prices import data

    known = {p.id for p in data.providers}
    ids = {p["slug"]: p["prices_provider"] for p in CATALOGUE}
    assert {slug for slug, pid in ids.items() if pid and pid not in known} == set()
    assert len({p["slug"] for p in CATALOGUE}) == len(CATALOGUE)
