"""GET /api/v1/exchange/rates and the earnings history endpoints."""

import pytest

from core.money import parse_usd
from pool.services import request_settle
from tests.accounts.factories import UserFactory
from tests.exchange.factories import exchange_provider, rule
from tests.keys.factories import ProviderFactory, key_in_state
from tests.pool.helpers import exchange_settlement, fund_exactly, run_on_own_loop as run

pytestmark = pytest.mark.django_db

RATES = "/api/v1/exchange/rates"


def _provider(body: dict, slug: str) -> dict:
    return next(p for p in body["providers"] if p["provider"] == slug)


def test_rates_show_the_callers_effective_rate_per_provider_and_task(authed_client, user):
    # given the global default, a provider rule, and this member's own overrides
    deepseek, moonshot = exchange_provider("deepseek"), exchange_provider("moonshot")
    ProviderFactory(slug="groq")  # no balance API: not on the exchange
    rule("90")
    rule("92", provider=deepseek)
    rule("75", user=user, provider=deepseek, task="embeddings")
    rule("1", user=UserFactory())  # someone else's rule

    body = authed_client.get(RATES).json()

    assert body["exchange_enabled"] is True
    assert [p["provider"] for p in body["providers"]] == ["deepseek", "moonshot"]
    assert _provider(body, "deepseek") == {
        "provider": "deepseek",
        "name": deepseek.name,
        "rate": "92.00",
        "state": "Enabled",
        "scope": "provider",
        "tasks": [
            {"task": "chat", "rate": "92.00", "state": "Enabled", "scope": "provider"},
            {"task": "embeddings", "rate": "75.00", "state": "Enabled", "scope": "user+provider+task"},
        ],
    }
    assert _provider(body, "moonshot")["rate"] == "90.00"
    assert moonshot.slug == "moonshot"


def test_a_provider_at_zero_for_the_caller_shows_disabled(authed_client, user):
    deepseek = exchange_provider("deepseek")
    rule("0", user=user, provider=deepseek)
    rule("0", provider=exchange_provider("moonshot"), task="chat")

    body = authed_client.get(RATES).json()

    deepseek_row = _provider(body, "deepseek")
    assert (deepseek_row["rate"], deepseek_row["state"]) == ("0.00", "Disabled")
    assert {t["state"] for t in deepseek_row["tasks"]} == {"Disabled"}
    # a 0% task disables that task only
    moonshot_row = _provider(body, "moonshot")
    assert moonshot_row["state"] == "Enabled"
    assert [(t["task"], t["state"]) for t in moonshot_row["tasks"]] == [("chat", "Disabled"), ("embeddings", "Enabled")]
    # another member still sees deepseek enabled
    from rest_framework.test import APIClient

    other = APIClient()
    other.force_authenticate(UserFactory())
    assert _provider(other.get(RATES).json(), "deepseek")["state"] == "Enabled"


def test_global_zero_disables_everything_whatever_user_rules_say(authed_client, user):
    deepseek = exchange_provider("deepseek")
    rule("95", user=user)
    rule("95", user=user, provider=deepseek, task="chat")
    rule("0")

    body = authed_client.get(RATES).json()

    assert body["exchange_enabled"] is False
    row = _provider(body, "deepseek")
    assert row["state"] == "Disabled"
    assert {(t["rate"], t["state"], t["scope"]) for t in row["tasks"]} == {("0.00", "Disabled", "global")}


def test_rates_need_authentication(api_client):
    assert api_client.get(RATES).status_code == 401


def _earn(settings, key, request_id: str, cost: str, percent: str = "90"):
    """An earning made by the gateway's own settlement: a payer charged exactly `cost` on `key`, at a
    global rate of `percent` (the settings' default: no rule)."""
    settings.HEADROOM_DEFAULT_PAYOUT_RATE = percent
    payer = UserFactory()
    fund_exactly(payer, parse_usd(cost))
    tokens = parse_usd(cost) * 1_000_000 // parse_usd("2")  # output at $2/M
    receipt = run(request_settle(s=exchange_settlement(payer, key, completion_tokens=tokens, request_id=request_id)))
    assert receipt.charged == parse_usd(cost)


@pytest.mark.django_db(transaction=True)  # the settlement commits on the gateway's own connections
def test_earnings_per_key(authed_client, user, settings):
    provider = exchange_provider("deepseek")
    first = key_in_state("active", owner=user, provider=provider, exchange=True)
    second = key_in_state("active", owner=user, provider=provider, exchange=True)
    strangers = key_in_state("active", provider=provider, exchange=True)
    _earn(settings, first, "a", "1.00")
    _earn(settings, first, "b", "0.50")
    _earn(settings, second, "c", "0.10", percent="0")
    _earn(settings, strangers, "d", "9.00")

    body = authed_client.get("/api/v1/exchange/earnings").json()

    assert body["earned"] == "1.35"
    assert body["requests"] == 3
    by_key = {row["key_id"]: row for row in body["keys"]}
    assert set(by_key) == {first.pk, second.pk}
    assert (by_key[first.pk]["requests"], by_key[first.pk]["settled_cost"], by_key[first.pk]["earned"]) == (
        2,
        "1.50",
        "1.35",
    )
    assert by_key[first.pk]["masked"] == first.masked
    assert by_key[second.pk]["earned"] == "0.00"


@pytest.mark.django_db(transaction=True)
def test_daily_earnings_group_by_day_key_and_rate(authed_client, user, settings):
    key = key_in_state("active", owner=user, provider=exchange_provider("deepseek"), exchange=True)
    _earn(settings, key, "a", "1.00", percent="90")
    _earn(settings, key, "b", "1.00", percent="90")
    _earn(settings, key, "c", "1.00", percent="50")

    rows = authed_client.get("/api/v1/exchange/earnings/daily", {"key": key.pk}).json()

    assert [(r["rate"], r["requests"], r["earned"]) for r in rows] == [("50.00", 1, "0.50"), ("90.00", 2, "1.80")]
    assert authed_client.get("/api/v1/exchange/earnings/daily", {"key": "x"}).status_code == 400
    assert authed_client.get("/api/v1/exchange/earnings/daily", {"key": key.pk + 1000}).json() == []
