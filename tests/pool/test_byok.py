"""BYOK: the monthly free tier and its UTC boundary, fail-over to the platform, strict own-keys mode."""

from datetime import date, datetime, timezone
from decimal import Decimal
from unittest import mock

import pytest
from openai import APIStatusError

from billing.models import ByokMonthlyUsage
from core.money import percent_of
from pool.models import RequestRecord
from tests.pool.conftest import COST, MODEL, PROMPT, PROVIDER
from tests.pool.helpers import SIGNUP, assert_ledger_clean, holds_during, main, platform, spend_all

MODEL_ID = f"{PROVIDER}/{MODEL}"
FEE = percent_of(COST, Decimal(5))


def _ask(member, url):
    raw = member.client(url).chat.completions.with_raw_response.create(model=MODEL_ID, messages=PROMPT)
    return raw.headers, raw.parse()


def test_month_boundary_millionth_free_next_charged_reset_on_the_first(world):
    alice = world.member()
    world.key(owner=alice.user, byok=True)
    december = datetime(2026, 12, 31, 23, 59, 59, 999_000, tzinfo=timezone.utc)
    ByokMonthlyUsage.objects.create(user=alice.user, month=date(2026, 12, 1), requests=999_999)

    with mock.patch("pool.gateway.clock", return_value=december):
        # request 1,000,000 of the month: free
        _, first = _ask(alice, world.url)
        assert first.usage.cost == 0
        assert main(alice.user) == SIGNUP
        # request 1,000,001: 5% of the notional cost
        _, second = _ask(alice, world.url)
        assert second.usage.cost == float(Decimal(FEE) / 10**9)
        assert second.usage.is_byok is True
        assert main(alice.user) == SIGNUP - FEE
        assert platform("revenue") == FEE

    # 00:00 UTC on the 1st: a new month, free again
    with mock.patch("pool.gateway.clock", return_value=datetime(2027, 1, 1, tzinfo=timezone.utc)):
        _, third = _ask(alice, world.url)
    assert third.usage.cost == 0
    assert main(alice.user) == SIGNUP - FEE
    assert ByokMonthlyUsage.objects.get(user=alice.user, month=date(2026, 12, 1)).requests == 1_000_001
    assert ByokMonthlyUsage.objects.get(user=alice.user, month=date(2027, 1, 1)).requests == 1
    fees = list(RequestRecord.objects.order_by("created_at").values_list("fee", flat=True))
    assert fees == [0, FEE, 0]
    assert_ledger_clean()


@pytest.mark.parametrize("fault", [{"status": 429, "retry_after": 7}, {"status": 500}, {"status": 503}])
def test_byok_fails_over_to_the_platform_before_the_first_byte(world, fault):
    alice = world.member()  # byok_fallback is on by default
    own = world.key(owner=alice.user, byok=True)
    world.key()  # a platform key
    world.fake.script(own.secret, **fault)

    headers, completion = _ask(alice, world.url)

    assert headers["x-headroom-route"] == "platform"
    assert completion.usage.is_byok is False
    assert main(alice.user) == SIGNUP - COST
    assert world.fake.count(key=own.secret, path="/chat/completions") == 1
    assert RequestRecord.objects.get().route == "platform"
    assert_ledger_clean()


def test_byok_fail_over_times_out_a_slow_first_byte(world, settings):
    settings.HEADROOM_UPSTREAM_READ_TIMEOUT = 0.5
    from pool import upstream

    upstream._sessions.clear()  # sessions carry the timeout: start a fresh one
    alice = world.member()
    own = world.key(owner=alice.user, byok=True)
    world.key()
    world.fake.script(own.secret, first_byte_delay=3)

    headers, _ = _ask(alice, world.url)
    assert headers["x-headroom-route"] == "platform"
    upstream._sessions.clear()
    assert_ledger_clean()


def test_strict_byok_returns_the_upstream_error(world):
    alice = world.member(byok_fallback=False)
    own = world.key(owner=alice.user, byok=True)
    platform_key = world.key()
    world.fake.script(own.secret, status=429, retry_after=30)

    with pytest.raises(APIStatusError) as raised:
        _ask(alice, world.url)

    error = raised.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "30"
    assert error.body["code"] == "upstream_rate_limited"
    assert own.secret[-4:] not in error.response.text  # the provider's body (echoing the key) is not relayed
    assert world.fake.count(key=platform_key.secret, path="/chat/completions") == 0
    assert main(alice.user) == SIGNUP
    assert RequestRecord.objects.get().outcome == "failed"
    assert_ledger_clean()


def _unusable(key, how: str) -> None:
    from keys.models import ProviderKey
    from keys.services import provider_key_deactivate

    if how == "removed":
        provider_key_deactivate(key=key, actor=key.owner_user, remove=True)
    else:
        ProviderKey.objects.filter(pk=key.pk).update(status=how)


@pytest.mark.parametrize("how", ["paused", "exhausted", "failed", "inactive", "removed"])
def test_strict_byok_refuses_when_the_own_key_cannot_serve_and_never_bills_the_platform(world, how):
    alice = world.member(byok_fallback=False)
    own = world.key(owner=alice.user, byok=True)
    platform_key = world.key()
    _unusable(own, how)

    with pytest.raises(APIStatusError) as raised:
        _ask(alice, world.url)

    assert raised.value.status_code == 503
    assert raised.value.body["code"] == "byok_key_unavailable"
    assert "byok_fallback" in raised.value.body["message"]
    assert world.fake.count(key=platform_key.secret, path="/chat/completions") == 0
    assert main(alice.user) == SIGNUP
    assert not RequestRecord.objects.exists()  # refused before anything was held or tried
    assert_ledger_clean()


def test_with_fall_back_on_a_paused_own_key_leaves_the_platform_to_serve(world):
    alice = world.member()  # byok_fallback on
    own = world.key(owner=alice.user, byok=True)
    world.key()
    _unusable(own, "paused")

    headers, answer = _ask(alice, world.url)

    assert headers["x-headroom-route"] == "platform"
    assert main(alice.user) == SIGNUP - COST
    assert_ledger_clean()


def test_strict_byok_without_any_own_key_for_the_provider_is_served_by_the_platform(world):
    alice = world.member(byok_fallback=False)  # strict, but brought no key for this provider
    world.key()

    headers, _ = _ask(alice, world.url)

    assert headers["x-headroom-route"] == "platform"
    assert main(alice.user) == SIGNUP - COST
    assert_ledger_clean()


def test_fall_back_needs_funds(world):
    alice = world.member()
    own = world.key(owner=alice.user, byok=True)
    world.key()
    world.fake.script(own.secret, status=500)
    spend_all(alice.user)  # given a member with nothing left to spend
    with pytest.raises(APIStatusError) as raised:
        _ask(alice, world.url)
    assert raised.value.status_code == 502  # the BYOK failure stands: the platform could not be paid for
    assert_ledger_clean()


def test_fail_over_past_the_free_tier_holds_for_both_routes_and_releases_both(world):
    from billing.models import Account, BalanceHold

    alice = world.member()
    own = world.key(owner=alice.user, byok=True)
    platform_key = world.key()
    world.fake.script(own.secret, status=503)
    from django.utils import timezone as django_timezone

    from billing.selectors import month_start

    # past the free tier this month: the BYOK fee is held too
    ByokMonthlyUsage.objects.create(user=alice.user, month=month_start(django_timezone.now()), requests=2_000_000)

    (headers, completion), held = holds_during(lambda: _ask(alice, world.url), fake=world.fake,
                                               secrets=[platform_key.secret])

    assert headers["x-headroom-route"] == "platform"
    request_id = headers["x-headroom-request-id"]
    assert sorted(held) == [f"{request_id}:byok", f"{request_id}:platform"]  # both held while in flight
    assert not BalanceHold.objects.exists()  # and both released with the request
    assert Account.objects.get(user=alice.user, kind="main").held == 0
    assert main(alice.user) == SIGNUP - COST
    assert_ledger_clean()
