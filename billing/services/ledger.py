"""Posting to the double-entry ledger: the only code that writes entries or balances.

The gateway's hot path posts a batch of requests at a time inside its own statements, through this
app's SQL forms of the same writes (billing/sql/: billing_ledger_post_batch, billing_balances_move,
billing_hold_take); nothing outside billing writes the ledger's tables or the cached balances."""

from collections.abc import Sequence

from django.db import IntegrityError, transaction
from django.db.models import F

from billing.models import Account, LedgerEntry, LedgerTransaction
from billing.selectors import BillingOwner, owner_filter

LEDGER_TOO_FEW_LEGS = "A transaction needs at least two entries."
LEDGER_NOT_BALANCED = "A transaction's entries must sum to zero (they sum to {total})."
LEDGER_ZERO_LEG = "A ledger entry cannot be zero."
LEDGER_NOT_INT = "Ledger amounts are integer nanodollars."
LEDGER_NO_IDEMPOTENCY_KEY = "Every transaction needs an idempotency key."
LEDGER_INSUFFICIENT_FUNDS = "Insufficient funds in {account}."


class LedgerError(ValueError):
    """A transaction that would break a ledger invariant. Nothing was written."""


class InsufficientFunds(LedgerError):
    def __init__(self, account: Account):
        super().__init__(LEDGER_INSUFFICIENT_FUNDS.format(account=account.get_kind_display().lower()))
        self.account_id = account.pk


def account_for_owner(*, owner: BillingOwner, kind: str) -> Account:
    """The owner's `main` or `frozen` account, created on first use."""
    if kind not in Account.OWNER_KINDS:
        raise ValueError(f"{kind!r} is not an owner account kind.")
    account, _ = Account.objects.get_or_create(kind=kind, **owner_filter(owner))
    return account


def platform_account(kind: str) -> Account:
    """A platform account, created on first use. Platform accounts may go negative."""
    if kind in Account.OWNER_KINDS:
        raise ValueError(f"{kind!r} is an owner account kind.")
    account, _ = Account.objects.get_or_create(
        kind=kind, user=None, organization=None, defaults={"may_go_negative": True}
    )
    return account


def _validate(legs: Sequence[tuple[Account, int]], idempotency_key: str) -> None:
    if not idempotency_key:
        raise LedgerError(LEDGER_NO_IDEMPOTENCY_KEY)
    if len(legs) < 2:
        raise LedgerError(LEDGER_TOO_FEW_LEGS)
    for _, amount in legs:
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise LedgerError(LEDGER_NOT_INT)
        if amount == 0:
            raise LedgerError(LEDGER_ZERO_LEG)
    total = sum(amount for _, amount in legs)
    if total != 0:
        raise LedgerError(LEDGER_NOT_BALANCED.format(total=total))


def ledger_post(
    *, legs: Sequence[tuple[Account, int]], idempotency_key: str, kind: str, memo: str = ""
) -> LedgerTransaction:
    """Post one balanced transaction, exactly once per idempotency key.

    Locks the accounts that have a floor (SELECT … FOR UPDATE, in primary-key
    order so two posts never deadlock) and refuses to take one below zero;
    writes the entries and moves the cached balances with F() in the same
    database transaction. A second call with the same key returns the first
    transaction (marked `replayed`) and moves nothing, whatever its legs.

    Platform accounts (no floor) are not locked up front and are updated last:
    every charge in the system credits the same revenue account, and its row
    lock is then held only from that last UPDATE to the commit.
    """
    _validate(legs, idempotency_key)
    deltas: dict[int, int] = {}
    floorless: set[int] = set()
    for account, amount in legs:
        deltas[account.pk] = deltas.get(account.pk, 0) + amount
        if account.may_go_negative:
            floorless.add(account.pk)

    with transaction.atomic():
        floored = sorted(pk for pk in deltas if pk not in floorless)
        locked = {a.pk: a for a in Account.objects.select_for_update().filter(pk__in=floored).order_by("pk")}
        # Checked after the locks: a concurrent post with the same key that got
        # there first has committed by now.
        existing = LedgerTransaction.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            existing.replayed = True
            return existing
        for pk in floored:
            account = locked[pk]
            if not account.may_go_negative and account.balance + deltas[pk] < 0:
                raise InsufficientFunds(account)
        try:
            with transaction.atomic():
                txn = LedgerTransaction.objects.create(idempotency_key=idempotency_key, kind=kind, memo=memo[:200])
        except IntegrityError:
            # Same key posted concurrently through accounts we did not share.
            existing = LedgerTransaction.objects.get(idempotency_key=idempotency_key)
            existing.replayed = True
            return existing
        LedgerEntry.objects.bulk_create(
            [LedgerEntry(transaction=txn, account_id=account.pk, amount=amount) for account, amount in legs]
        )
        for pk in [*floored, *sorted(floorless)]:
            if deltas[pk]:
                Account.objects.filter(pk=pk).update(balance=F("balance") + deltas[pk])
    return txn


def ledger_transfer(
    *, source: Account, destination: Account, amount: int, idempotency_key: str, kind: str, memo: str = ""
) -> LedgerTransaction:
    """Move `amount` nanodollars (> 0) from `source` to `destination`."""
    if not isinstance(amount, int) or amount <= 0:
        raise LedgerError("A transfer amount must be a positive number of nanodollars.")
    return ledger_post(
        legs=[(source, -amount), (destination, amount)], idempotency_key=idempotency_key, kind=kind, memo=memo
    )
