"""Deciding withdrawals: paid with a hash or rejected with a reason, each exactly once, audited."""

import pytest
from django.core.management import call_command

from billing.models import Account, LedgerTransaction
from core.money import parse_usd
from payouts.models import Withdrawal
from payouts.services import (
    WITHDRAWALS_PAID_ACCOUNT_KIND,
    PayoutError,
    conversion_create,
    withdrawal_mark_paid,
    withdrawal_reject,
    withdrawal_request,
)
from tests.accounts.factories import UserFactory
from tests.payouts.factories import (
    ADDRESSES,
    TX_HASHES,
    frozen_balance,
    fund_frozen,
    platform_balance,
    processor,
)

pytestmark = pytest.mark.django_db

TRON_HASH = TX_HASHES["tron"]


@pytest.fixture
def withdrawal(user) -> Withdrawal:
    fund_frozen(user, "15.00")
    return withdrawal_request(owner=user, actor=user, amount=parse_usd("10"), network="USDT-TRC20", address=ADDRESSES["USDT-TRC20"])


@pytest.fixture
def admin():
    return processor()


def test_mark_paid_moves_the_hold_out_and_records_the_hash(withdrawal, admin):
    payable = platform_balance(Account.Kind.WITHDRAWALS_PAYABLE)
    paid_out = platform_balance(WITHDRAWALS_PAID_ACCOUNT_KIND)

    done = withdrawal_mark_paid(withdrawal_id=withdrawal.pk, actor=admin, tx_hash=f"  {TRON_HASH} ")

    assert done.state == Withdrawal.State.PAID
    assert (done.tx_hash, done.decided_by, done.decided_at is not None) == (TRON_HASH, admin, True)
    assert done.settle_transaction.kind == LedgerTransaction.Kind.WITHDRAWAL_PAID
    assert platform_balance(Account.Kind.WITHDRAWALS_PAYABLE) == payable - parse_usd("10")
    assert platform_balance(WITHDRAWALS_PAID_ACCOUNT_KIND) == paid_out + parse_usd("10")
    assert frozen_balance(withdrawal.user) == parse_usd("5")  # unchanged by the payout
    event = done.events.last()
    assert (event.from_state, event.to_state, event.actor, event.note) == ("pending", "paid", admin, TRON_HASH)


def test_reject_returns_the_hold_to_frozen(withdrawal, admin):
    done = withdrawal_reject(withdrawal_id=withdrawal.pk, actor=admin, note="Wrong network for this address")
    assert done.state == Withdrawal.State.REJECTED
    assert done.note == "Wrong network for this address"
    assert done.settle_transaction.kind == LedgerTransaction.Kind.WITHDRAWAL_RETURN
    assert frozen_balance(withdrawal.user) == parse_usd("15")
    event = done.events.last()
    assert (event.from_state, event.to_state, event.actor) == ("pending", "rejected", admin)


@pytest.mark.parametrize(
    ("first", "second"),
    [("pay", "pay"), ("pay", "reject"), ("reject", "reject"), ("reject", "pay")],
)
def test_a_withdrawal_is_decided_exactly_once(withdrawal, admin, first, second):
    decide = {
        "pay": lambda: withdrawal_mark_paid(withdrawal_id=withdrawal.pk, actor=admin, tx_hash=TRON_HASH),
        "reject": lambda: withdrawal_reject(withdrawal_id=withdrawal.pk, actor=admin, note="no"),
    }
    decide[first]()
    state_after_first = Withdrawal.objects.get(pk=withdrawal.pk).state
    frozen_after_first = frozen_balance(withdrawal.user)

    with pytest.raises(PayoutError, match="already (paid|rejected); it can be decided only once"):
        decide[second]()

    assert Withdrawal.objects.get(pk=withdrawal.pk).state == state_after_first
    assert frozen_balance(withdrawal.user) == frozen_after_first
    assert withdrawal.events.count() == 2
    call_command("ledger_check")


def test_only_holders_of_the_permission_decide(withdrawal):
    staff_without = UserFactory(is_staff=True)
    with pytest.raises(PayoutError, match="permission"):
        withdrawal_mark_paid(withdrawal_id=withdrawal.pk, actor=staff_without, tx_hash=TRON_HASH)
    with pytest.raises(PayoutError, match="permission"):
        withdrawal_reject(withdrawal_id=withdrawal.pk, actor=withdrawal.user, note="mine")
    assert Withdrawal.objects.get(pk=withdrawal.pk).state == Withdrawal.State.PENDING


@pytest.mark.parametrize("tx_hash", ["", "   ", "a" * 63, "a" * 65, "g" * 64, "0x" + "a" * 63, "5" * 88])
def test_a_hash_not_of_the_network_is_refused(withdrawal, admin, tx_hash):
    with pytest.raises(PayoutError, match="not a USDT-TRC20 transaction hash"):
        withdrawal_mark_paid(withdrawal_id=withdrawal.pk, actor=admin, tx_hash=tx_hash)
    assert Withdrawal.objects.get(pk=withdrawal.pk).state == Withdrawal.State.PENDING
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.WITHDRAWAL_PAID).count() == 0


def test_a_rejection_needs_a_reason(withdrawal, admin):
    with pytest.raises(PayoutError, match="Say why"):
        withdrawal_reject(withdrawal_id=withdrawal.pk, actor=admin, note="  ")


def test_the_state_cannot_be_set_by_hand(withdrawal):
    with pytest.raises(AttributeError):
        withdrawal.state = Withdrawal.State.PAID


def test_conversion_minimum_comes_from_settings(user, settings):
    settings.HEADROOM_CONVERSION_MINIMUM = "1.00"
    fund_frozen(user, "2.00")
    with pytest.raises(PayoutError, match=r"minimum conversion is \$1.00"):
        conversion_create(owner=user, actor=user, amount=parse_usd("0.50"))


def test_ledger_check_is_clean_after_every_kind_of_payout(user, admin):
    fund_frozen(user, "50.00")
    conversion_create(owner=user, actor=user, amount=parse_usd("0.10"))
    paid = withdrawal_request(owner=user, actor=user, amount=parse_usd("10"), network="BTC", address=ADDRESSES["BTC"])
    rejected = withdrawal_request(owner=user, actor=user, amount=parse_usd("20"), network="BTC", address=ADDRESSES["BTC"])
    withdrawal_request(owner=user, actor=user, amount=parse_usd("10"), network="BTC", address=ADDRESSES["BTC"])
    withdrawal_mark_paid(withdrawal_id=paid.pk, actor=admin, tx_hash=TX_HASHES["bitcoin"])
    withdrawal_reject(withdrawal_id=rejected.pk, actor=admin, note="duplicate")
    assert frozen_balance(user) == parse_usd("50") - parse_usd("0.10") - parse_usd("10") - parse_usd("10")
    call_command("ledger_check")
