"""Writes for payouts: conversions, withdrawal requests and their admin decisions.

Every function here moves money only through billing.services, inside one
database transaction together with the rows that record it, so a refusal or a
crash leaves no half-done payout behind.
"""

import uuid

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_fsm import ConcurrentTransition, can_proceed

from accounts.models import Organization, User
from billing.models import Account, LedgerTransaction
from core.money import format_usd, parse_usd
from billing.selectors import BillingOwner
from billing.services import (
    InsufficientFunds,
    account_for_owner,
    ledger_transfer,
    platform_account,
)
from core.errors import ServiceError
from payouts.addresses import address_is_valid, tx_hash_is_valid
from payouts.models import Conversion, Withdrawal, WithdrawalEvent, WithdrawalNetwork
from payouts.selectors import organization_is_owned_by

# Paid withdrawals leave the platform through the account exchange earnings
# came from: its balance then reads "earned by sellers, minus paid out in
# crypto", and LedgerTransaction kind `withdrawal_paid` totals the crypto sent.
WITHDRAWALS_PAID_ACCOUNT_KIND = Account.Kind.EXCHANGE_PAYOUTS

CONVERSION_BELOW_MINIMUM = "The minimum conversion is {minimum}."
CONVERSION_ABOVE_BALANCE = "You can convert at most your frozen balance, {balance}."
WITHDRAWAL_BELOW_MINIMUM = "The minimum withdrawal is {minimum}."
WITHDRAWAL_ABOVE_BALANCE = "You can withdraw at most your frozen balance, {balance}."
WITHDRAWAL_UNKNOWN_NETWORK = "\"{network}\" is not a network we pay out on. Choose one of: {choices}."
WITHDRAWAL_BAD_ADDRESS = "That is not a valid {network} address: expected {format}."
WITHDRAWAL_NOT_PENDING = "Withdrawal {id} is already {state}; it can be decided only once."
WITHDRAWAL_NOT_PERMITTED = "You do not have permission to process withdrawals."
WITHDRAWAL_BAD_TX_HASH = "That is not a {network} transaction hash."
WITHDRAWAL_REJECT_NEEDS_NOTE = "Say why the withdrawal is rejected: the member sees the reason."
PAYOUT_NOT_ORG_OWNER = (
    "Organization owner required: only an organization's owners convert or withdraw its frozen balance."
)
PAYOUT_NOT_YOURS = "You can move only your own frozen balance, or that of an organization you own."


class PayoutError(ServiceError):
    """A refused payout operation. Nothing was written; the message is safe to show."""

    code = "payout_refused"


class PayoutForbidden(PayoutError):
    """Refused because of who asked rather than what they asked for (the API answers 403)."""

    code = "permission_denied"
    status_code = 403


def _check_actor(*, owner: BillingOwner, actor: User) -> Organization | None:
    """The organization whose balance moves (None for the actor's own); refuse anyone else.

    A member moves only their own balance; an organization's moves only at
    the hands of one of its owners, as its provider keys are managed.
    """
    if isinstance(owner, Organization):
        if not organization_is_owned_by(organization=owner, user=actor):
            raise PayoutForbidden(PAYOUT_NOT_ORG_OWNER)
        return owner
    if not isinstance(owner, User):
        raise TypeError(f"A billing owner is a User or an Organization, not {type(owner).__name__}.")
    if owner.pk != actor.pk:
        # No caller passes another member; refuse rather than move their money.
        raise PayoutForbidden(PAYOUT_NOT_YOURS)
    return None


def conversion_create(*, owner: BillingOwner, actor: User, amount: int) -> Conversion:
    """Move `amount` nanodollars from the owner's frozen balance to the owner's main balance.

    `owner` is the actor themself or an organization the actor owns. At least
    HEADROOM_CONVERSION_MINIMUM, at most the frozen balance: the ledger locks
    the frozen account, so concurrent conversions never take more than is there.
    """
    organization = _check_actor(owner=owner, actor=actor)
    minimum = parse_usd(settings.HEADROOM_CONVERSION_MINIMUM)
    if amount < minimum:
        raise PayoutError(CONVERSION_BELOW_MINIMUM.format(minimum=format_usd(minimum)), code="below_minimum")
    frozen = account_for_owner(owner=owner, kind=Account.Kind.FROZEN)
    main = account_for_owner(owner=owner, kind=Account.Kind.MAIN)
    reference = uuid.uuid4()
    try:
        with transaction.atomic():
            txn = ledger_transfer(
                source=frozen,
                destination=main,
                amount=amount,
                idempotency_key=f"conversion:{reference}",
                kind=LedgerTransaction.Kind.CONVERSION,
                memo="Frozen balance converted to main balance",
            )
            return Conversion.objects.create(
                user=actor, organization=organization, reference=reference, amount=amount, ledger_transaction=txn
            )
    except InsufficientFunds:
        frozen.refresh_from_db(fields=["balance"])
        raise PayoutError(CONVERSION_ABOVE_BALANCE.format(balance=format_usd(frozen.balance)), code="insufficient_balance") from None


def _network_for_request(code: str) -> WithdrawalNetwork:
    network = WithdrawalNetwork.objects.filter(code__iexact=code.strip(), is_active=True).first()
    if network is None:
        choices = ", ".join(WithdrawalNetwork.objects.filter(is_active=True).values_list("code", flat=True))
        raise PayoutError(WITHDRAWAL_UNKNOWN_NETWORK.format(network=code.strip()[:40], choices=choices or "none"), code="unknown_network")
    return network


def withdrawal_request(
    *, owner: BillingOwner, actor: User, amount: int, network: str, address: str
) -> Withdrawal:
    """Request a crypto withdrawal; the amount is held at once (owner's frozen → withdrawals payable).

    `owner` is the actor themself or an organization the actor owns. At least
    HEADROOM_WITHDRAWAL_MINIMUM, at most the frozen balance, on an active
    network, to an address in that network's format.
    """
    organization = _check_actor(owner=owner, actor=actor)
    minimum = parse_usd(settings.HEADROOM_WITHDRAWAL_MINIMUM)
    if amount < minimum:
        raise PayoutError(WITHDRAWAL_BELOW_MINIMUM.format(minimum=format_usd(minimum)), code="below_minimum")
    chosen = _network_for_request(network)
    address = address.strip()
    if not address_is_valid(address_format=chosen.address_format, address=address):
        raise PayoutError(
            WITHDRAWAL_BAD_ADDRESS.format(network=chosen.code, format=chosen.get_address_format_display()),
            code="invalid_address",
        )
    frozen = account_for_owner(owner=owner, kind=Account.Kind.FROZEN)
    payable = platform_account(Account.Kind.WITHDRAWALS_PAYABLE)
    reference = uuid.uuid4()
    try:
        with transaction.atomic():
            hold = ledger_transfer(
                source=frozen,
                destination=payable,
                amount=amount,
                idempotency_key=f"withdrawal-hold:{reference}",
                kind=LedgerTransaction.Kind.WITHDRAWAL_HOLD,
                memo=f"Withdrawal requested on {chosen.code}",
            )
            withdrawal = Withdrawal.objects.create(
                user=actor,
                organization=organization,
                reference=reference,
                amount=amount,
                network=chosen,
                address=address,
                hold_transaction=hold,
            )
            WithdrawalEvent.objects.create(
                withdrawal=withdrawal, from_state="", to_state=withdrawal.state, actor=actor, note="Requested"
            )
            return withdrawal
    except InsufficientFunds:
        frozen.refresh_from_db(fields=["balance"])
        raise PayoutError(WITHDRAWAL_ABOVE_BALANCE.format(balance=format_usd(frozen.balance)), code="insufficient_balance") from None


def _withdrawal_lock(withdrawal_id: int) -> Withdrawal:
    """The withdrawal row, locked until the caller's transaction ends (atomic() is required)."""
    return (
        Withdrawal.objects.select_for_update(of=("self",))
        .select_related("network")
        .get(pk=withdrawal_id)
    )


def _decide(*, withdrawal_id: int, actor: User, transition_name: str, apply, post) -> Withdrawal:
    """Lock, check, transition, move the money, save and audit: one decision, exactly once.

    The row lock serialises two admins deciding the same withdrawal; the second
    finds it no longer pending and is refused. ConcurrentTransitionMixin
    refuses the save as well should the row ever change under us.
    """
    if not actor.has_perm(Withdrawal.PROCESS_PERMISSION):
        raise PayoutError(WITHDRAWAL_NOT_PERMITTED, code="permission_denied")
    try:
        with transaction.atomic():
            withdrawal = _withdrawal_lock(withdrawal_id)
            method = getattr(withdrawal, transition_name)
            if not can_proceed(method):
                raise PayoutError(
                    WITHDRAWAL_NOT_PENDING.format(id=withdrawal.pk, state=withdrawal.get_state_display().lower()),
                    code="not_pending",
                )
            from_state = withdrawal.state
            apply(withdrawal)
            withdrawal.settle_transaction = post(withdrawal)
            withdrawal.save()
            WithdrawalEvent.objects.create(
                withdrawal=withdrawal,
                from_state=from_state,
                to_state=withdrawal.state,
                actor=actor,
                note=withdrawal.tx_hash if withdrawal.state == Withdrawal.State.PAID else withdrawal.note,
            )
            return withdrawal
    except ConcurrentTransition:
        current = Withdrawal.objects.get(pk=withdrawal_id)
        raise PayoutError(
            WITHDRAWAL_NOT_PENDING.format(id=current.pk, state=current.get_state_display().lower()),
            code="not_pending",
        ) from None


def withdrawal_mark_paid(*, withdrawal_id: int, actor: User, tx_hash: str) -> Withdrawal:
    """An admin paid the withdrawal on chain: record the hash; payable → the paid-out account."""
    tx_hash = tx_hash.strip()

    def apply(withdrawal: Withdrawal) -> None:
        if not tx_hash_is_valid(address_format=withdrawal.network.address_format, tx_hash=tx_hash):
            raise PayoutError(WITHDRAWAL_BAD_TX_HASH.format(network=withdrawal.network.code), code="invalid_tx_hash")
        withdrawal.mark_paid(by=actor, tx_hash=tx_hash, at=timezone.now())

    def post(withdrawal: Withdrawal) -> LedgerTransaction:
        return ledger_transfer(
            source=platform_account(Account.Kind.WITHDRAWALS_PAYABLE),
            destination=platform_account(WITHDRAWALS_PAID_ACCOUNT_KIND),
            amount=withdrawal.amount,
            idempotency_key=f"withdrawal-paid:{withdrawal.reference}",
            kind=LedgerTransaction.Kind.WITHDRAWAL_PAID,
            memo=f"Withdrawal {withdrawal.pk} paid on {withdrawal.network.code}",
        )

    return _decide(withdrawal_id=withdrawal_id, actor=actor, transition_name="mark_paid", apply=apply, post=post)


def withdrawal_reject(*, withdrawal_id: int, actor: User, note: str) -> Withdrawal:
    """An admin refused the withdrawal: the hold returns to the frozen balance it came from."""
    note = note.strip()
    if not note:
        raise PayoutError(WITHDRAWAL_REJECT_NEEDS_NOTE, code="note_required")

    def apply(withdrawal: Withdrawal) -> None:
        withdrawal.reject(by=actor, note=note[:500], at=timezone.now())

    def post(withdrawal: Withdrawal) -> LedgerTransaction:
        return ledger_transfer(
            source=platform_account(Account.Kind.WITHDRAWALS_PAYABLE),
            destination=account_for_owner(owner=withdrawal.billing_owner, kind=Account.Kind.FROZEN),
            amount=withdrawal.amount,
            idempotency_key=f"withdrawal-return:{withdrawal.reference}",
            kind=LedgerTransaction.Kind.WITHDRAWAL_RETURN,
            memo=f"Withdrawal {withdrawal.pk} rejected: returned to frozen balance",
        )

    return _decide(withdrawal_id=withdrawal_id, actor=actor, transition_name="reject", apply=apply, post=post)
