"""An exchange earning is the payout rate of what was *collected* from the payer (SPEC "Served ≤
collected", issue 12), decided inside pool_settle after the charge is capped at the payer's balance.

Settled here straight through pool.services.request_settle, on real PostgreSQL, because the capped case
is one a provider cannot be made to produce on demand once the hold bounds what it may bill; the race
through /v1 is tests/pool/test_earnings_race.py.
"""

from decimal import Decimal

import pytest

from billing.models import Account, LedgerTransaction
from core.money import parse_usd, percent_of
from exchange.models import ExchangeEarning
from keys.models import ProviderKey, ProviderKeyStats
from pool.models import RequestRecord
from pool.services import request_settle
from tests.accounts.factories import UserFactory
from tests.keys.factories import key_in_state
from tests.pool.helpers import (
    SIGNUP, assert_ledger_clean, exchange_settlement, frozen, main, run_on_own_loop as run, spend_all,
)

pytestmark = pytest.mark.django_db(transaction=True)
RATE = Decimal("90.00")  # HEADROOM_DEFAULT_PAYOUT_RATE: no rule, the settings' global default


@pytest.fixture
def seller_key(settings):
    settings.HEADROOM_DEFAULT_PAYOUT_RATE = str(RATE)
    return key_in_state(ProviderKey.Status.ACTIVE, owner=UserFactory(), exchange=True)


def test_a_capped_charge_earns_the_rate_of_what_was_collected_not_of_the_cost(user, seller_key):
    # 1.5M output tokens at $2/M: $3.00, more than the payer's $2.00
    receipt = run(request_settle(s=exchange_settlement(user, seller_key, completion_tokens=1_500_000)))

    earned = percent_of(SIGNUP, RATE)  # 90% of the $2.00 collected: $1.80, not 90% of $3.00
    print(f"\ncost $3.00, collected ${SIGNUP / 1e9:.2f}, earned ${earned / 1e9:.2f} at {RATE}%")
    assert (receipt.cost, receipt.charged, receipt.reward) == (parse_usd("3.00"), SIGNUP, earned)
    assert main(user) == 0 and frozen(seller_key.owner_user) == earned
    row = ExchangeEarning.objects.get(request_id="req_1")
    assert (row.settled_cost, row.collected, row.rate_percent, row.amount) == (parse_usd("3.00"), SIGNUP, RATE, earned)
    assert row.ledger_transaction.idempotency_key == "exchange-earning:req_1"
    record = RequestRecord.objects.get()
    assert (record.cost, record.charged, record.reward, record.payout_rate) == (parse_usd("3.00"), SIGNUP, earned, RATE)
    assert ProviderKeyStats.objects.get(key=seller_key).credits_earned == earned
    assert_ledger_clean()


def test_the_earning_rounds_as_percent_of_rounds(user, seller_key, settings):
    settings.HEADROOM_DEFAULT_PAYOUT_RATE = "12.35"
    spend_all(user)
    from billing.services import account_for_owner, ledger_transfer, platform_account

    ledger_transfer(source=platform_account(Account.Kind.ADJUSTMENTS), destination=account_for_owner(
        owner=user, kind=Account.Kind.MAIN), amount=12_345, idempotency_key="top-up", kind="adjustment")

    receipt = run(request_settle(s=exchange_settlement(user, seller_key, completion_tokens=1_000)))  # $0.000002 > 12,345

    assert receipt.charged == 12_345
    assert receipt.reward == percent_of(12_345, Decimal("12.35")) == 1_525  # 1524.6075 → 1525
    assert ExchangeEarning.objects.get().collected == 12_345
    assert_ledger_clean()


def test_nothing_collected_earns_nothing_and_posts_no_transaction(user, seller_key):
    spend_all(user)

    receipt = run(request_settle(s=exchange_settlement(user, seller_key, completion_tokens=1_000)))

    assert (receipt.cost, receipt.charged, receipt.reward) == (2_000_000, 0, 0)
    row = ExchangeEarning.objects.get(request_id="req_1")
    assert (row.settled_cost, row.collected, row.rate_percent, row.amount, row.ledger_transaction_id) == (
        2_000_000, 0, RATE, 0, None)
    assert not LedgerTransaction.objects.filter(idempotency_key="exchange-earning:req_1").exists()
    assert frozen(seller_key.owner_user) == 0
    assert RequestRecord.objects.get().reward == 0
    assert_ledger_clean()


def test_a_failed_request_earns_nothing_even_for_what_it_was_charged(user, seller_key):
    # a stream cut after some tokens: the payer is charged for them, the seller earns nothing (SPEC:
    # "after each *successful* request the owner earns")
    s = exchange_settlement(user, seller_key, completion_tokens=1_000, outcome=RequestRecord.Outcome.CUT)

    receipt = run(request_settle(s=s))

    assert (receipt.charged, receipt.reward) == (2_000_000, 0)
    assert not ExchangeEarning.objects.exists()
    assert frozen(seller_key.owner_user) == 0
    assert_ledger_clean()


def test_a_replay_earns_nothing_again(user, seller_key):
    s = exchange_settlement(user, seller_key, completion_tokens=1_000)

    first = run(request_settle(s=s))
    again = run(request_settle(s=s))

    assert first.reward == again.reward == percent_of(2_000_000, RATE)
    assert ExchangeEarning.objects.count() == 1 and frozen(seller_key.owner_user) == first.reward
    assert_ledger_clean()


# --- ledger_check ------------------------------------------------------------------------------------


def _ledger_check() -> str:
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    err = StringIO()
    try:
        call_command("ledger_check", stdout=StringIO(), stderr=err)
    except CommandError:
        return err.getvalue()
    return ""


def test_ledger_check_is_clean_after_a_capped_and_an_uncollected_earning(user, seller_key):
    run(request_settle(s=exchange_settlement(user, seller_key, completion_tokens=1_500_000, request_id="req_1")))
    run(request_settle(s=exchange_settlement(user, seller_key, completion_tokens=1_000, request_id="req_2")))  # $0 left

    assert _ledger_check() == ""


@pytest.mark.ledger_broken
def test_ledger_check_flags_an_earning_above_the_rate_of_what_was_collected(user, seller_key):
    run(request_settle(s=exchange_settlement(user, seller_key, completion_tokens=1_500_000)))
    # planted: the seller paid 90% of the notional $3.00 although $2.00 was collected (what the settlement
    # did before pool/0008); the ledger is left balanced: only the earnings' checks can see it
    row = ExchangeEarning.objects.get()
    notional = percent_of(parse_usd("3.00"), RATE)
    ExchangeEarning.objects.filter(pk=row.pk).update(amount=notional)

    problems = _ledger_check()

    assert f"earned {notional}, more than 90.00% of the {SIGNUP} collected" in problems  # exchange's check
    assert f"earned {notional}, more than 90.00% of the {SIGNUP} its request was charged" in problems  # pool's


@pytest.mark.ledger_broken
def test_ledger_check_flags_an_earning_where_nothing_was_collected(user, seller_key):
    run(request_settle(s=exchange_settlement(user, seller_key, completion_tokens=1_000)))
    ExchangeEarning.objects.update(collected=0)  # planted: the earning says nothing was collected

    problems = _ledger_check()

    assert "where nothing was collected" in problems
    assert "says 0 was collected, its request was charged 2000000" in problems


@pytest.mark.ledger_broken
def test_ledger_check_holds_rows_recorded_before_collected_to_their_requests_charge(user, seller_key):
    spend_all(user)
    run(request_settle(s=exchange_settlement(user, seller_key, completion_tokens=1_000)))  # 0 collected
    # planted: a row recorded before `collected` was kept, paid 90% of the notional cost
    from billing.services import account_for_owner, ledger_transfer, platform_account

    frozen_account = account_for_owner(owner=seller_key.owner_user, kind=Account.Kind.FROZEN)
    paid = ledger_transfer(source=platform_account(Account.Kind.EXCHANGE_PAYOUTS), destination=frozen_account,
                           amount=1_800_000, idempotency_key="legacy", kind=LedgerTransaction.Kind.EXCHANGE_EARNING)
    ExchangeEarning.objects.update(collected=None, amount=1_800_000, ledger_transaction=paid)

    problems = _ledger_check()

    assert "earned 1800000, more than 90.00% of the 0 its request was charged" in problems
