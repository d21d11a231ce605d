"""Money for gateway requests: holds, capped charges, rewards, the BYOK monthly counter."""

from datetime import datetime, timedelta, timezone

import pytest

from billing.models import Account, BalanceHold
from billing.money import parse_usd
from billing.selectors import balances_for_owner, byok_requests_in_month, ledger_violations, month_start
from billing.services import (
    InsufficientFunds,
    byok_fee_charge,
    byok_request_count,
    hold_place,
    hold_release,
    pool_reward_credit,
    usage_charge,
)
from billing.tasks import stale_holds_release_task
from tests.accounts.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_holds_reserve_the_spendable_balance(user):
    hold_place(owner=user, amount=parse_usd("1.50"), request_id="r1")
    # only $0.50 is spendable now
    with pytest.raises(InsufficientFunds):
        hold_place(owner=user, amount=parse_usd("0.51"), request_id="r2")
    hold_place(owner=user, amount=parse_usd("0.50"), request_id="r3")
    hold_release(request_ids=["r1"])
    hold_place(owner=user, amount=parse_usd("1.50"), request_id="r4")
    assert balances_for_owner(owner=user).main == parse_usd("2")  # a hold moves no money


def test_a_zero_hold_reserves_nothing(user):
    assert hold_place(owner=user, amount=0, request_id="r0") is None


def test_charge_is_capped_at_the_balance_and_idempotent(user):
    assert usage_charge(owner=user, amount=parse_usd("0.5"), request_id="a") == parse_usd("0.5")
    assert usage_charge(owner=user, amount=parse_usd("0.5"), request_id="a") == parse_usd("0.5")  # replay
    assert usage_charge(owner=user, amount=parse_usd("5"), request_id="b") == parse_usd("1.5")  # capped
    assert balances_for_owner(owner=user).main == 0
    assert usage_charge(owner=user, amount=10, request_id="c") == 0
    assert byok_fee_charge(owner=user, amount=10, request_id="d") == 0
    assert ledger_violations() == []


def test_pool_reward_comes_from_the_pool_rewards_account(user):
    pool_reward_credit(donor=user, amount=2_150, request_id="p")
    pool_reward_credit(donor=user, amount=2_150, request_id="p")
    assert balances_for_owner(owner=user).main == parse_usd("2") + 2_150
    assert Account.objects.get(kind=Account.Kind.POOL_REWARDS).balance == -2_150


def test_byok_counter_is_per_owner_and_utc_month(user):
    other = UserFactory()
    late = datetime(2026, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    early = datetime(2027, 1, 1, 0, 0, 0, tzinfo=timezone.utc)
    assert [byok_request_count(owner=user, at=late) for _ in range(3)] == [1, 2, 3]
    assert byok_request_count(owner=user, at=early) == 1
    assert byok_request_count(owner=other, at=late) == 1
    assert byok_requests_in_month(owner=user, at=late) == 3
    # a time zone east of UTC on the 1st is still the previous month in UTC
    tokyo = datetime(2027, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=9)))
    assert month_start(tokyo).month == 12


def test_stale_holds_are_released_by_the_periodic_task(user, settings):
    settings.HEADROOM_STALE_HOLD_SECONDS = 60
    fresh = hold_place(owner=user, amount=1, request_id="fresh")
    stale = hold_place(owner=user, amount=1, request_id="stale")
    BalanceHold.objects.filter(pk=stale.pk).update(created_at=stale.created_at - timedelta(seconds=61))
    assert stale_holds_release_task.delay().get() == 1
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.released_at is not None and fresh.released_at is None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_holds_never_reserve_more_than_the_balance():
    from tests.concurrency import run_concurrently

    user = UserFactory()

    def hold(i):
        try:
            hold_place(owner=user, amount=parse_usd("0.30"), request_id=f"h{i}")
            return "held"
        except InsufficientFunds:
            return "refused"

    outcomes = run_concurrently(20, hold)
    assert outcomes.count("held") == 6  # 6 × $0.30 ≤ $2.00 < 7 × $0.30
