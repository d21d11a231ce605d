"""Money for one gateway request: holds before dispatch, charges, fees and rewards after.

The gateway (pool.services.request_settle) calls these inside its settlement
transaction; each posting carries an idempotency key derived from the request
id, so a retried settlement moves nothing twice.
"""

from collections.abc import Sequence
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from billing.models import Account, BalanceHold, ByokMonthlyUsage, LedgerTransaction
from billing.selectors import BillingOwner, month_start, owner_filter

from .ledger import (
    InsufficientFunds,
    account_for_owner,
    ledger_transfer,
    platform_account,
)


def hold_place(*, owner: BillingOwner, amount: int, request_id: str) -> BalanceHold | None:
    """Reserve `amount` of the owner's main balance for a request, or raise InsufficientFunds.

    One conditional UPDATE (`balance − held ≥ amount`) both checks and reserves,
    so concurrent requests cannot together reserve more than the balance, and
    the account row is locked only from that statement to the commit right
    after it. A zero amount reserves nothing.
    """
    if amount <= 0:
        return None
    account = account_for_owner(owner=owner, kind=Account.Kind.MAIN)
    with transaction.atomic():
        hold = BalanceHold.objects.create(account=account, amount=amount, request_id=request_id)
        reserved = Account.objects.filter(pk=account.pk, balance__gte=F("held") + amount).update(
            held=F("held") + amount
        )
        if not reserved:
            raise InsufficientFunds(account)
    return hold


def _release(holds) -> int:
    """Close open holds and give their amounts back to their accounts; each hold exactly once."""
    released = 0
    now = timezone.now()
    for pk, account_id, amount in holds.values_list("pk", "account_id", "amount"):
        if BalanceHold.objects.filter(pk=pk, released_at__isnull=True).update(released_at=now):
            Account.objects.filter(pk=account_id).update(held=F("held") - amount)
            released += 1
    return released


def hold_release(*, request_ids: Sequence[str]) -> None:
    """Release these holds where still open. Caller holds the settlement transaction."""
    _release(BalanceHold.objects.filter(request_id__in=request_ids, released_at__isnull=True))


def holds_release_stale(*, older_than: timedelta) -> int:
    """Release holds left open by a process that died mid-request; returns how many.

    No request lasts this long (the gateway's read timeout bounds it), so an
    older open hold can only belong to a request that will never settle.
    """
    cutoff = timezone.now() - older_than
    with transaction.atomic():
        return _release(BalanceHold.objects.filter(released_at__isnull=True, created_at__lt=cutoff))


def _charge_capped(*, owner: BillingOwner, amount: int, idempotency_key: str, kind: str, memo: str) -> int:
    """Debit up to `amount` from the owner's main balance into revenue; returns what was taken.

    The hold made before dispatch covers the worst case, so the cap only bites
    when a provider bills beyond it (more tokens than max_tokens allowed): the
    member's balance never goes below zero and the shortfall is the platform's.
    """
    if amount <= 0:
        return 0
    main = (
        Account.objects.select_for_update().filter(kind=Account.Kind.MAIN, **owner_filter(owner)).first()
        or account_for_owner(owner=owner, kind=Account.Kind.MAIN)
    )
    taken = min(amount, main.balance)
    if taken <= 0:
        return 0
    txn = ledger_transfer(
        source=main,
        destination=platform_account(Account.Kind.REVENUE),
        amount=taken,
        idempotency_key=idempotency_key,
        kind=kind,
        memo=memo,
    )
    if getattr(txn, "replayed", False):
        return -txn.entries.get(account=main).amount  # what the first settlement took
    return taken


def usage_charge(*, owner: BillingOwner, amount: int, request_id: str) -> int:
    """Charge a pay-as-you-go request's cost. Caller holds the settlement transaction."""
    return _charge_capped(
        owner=owner,
        amount=amount,
        idempotency_key=f"charge:{request_id}",
        kind=LedgerTransaction.Kind.USAGE,
        memo=f"request {request_id}",
    )


def byok_fee_charge(*, owner: BillingOwner, amount: int, request_id: str) -> int:
    """Charge the BYOK fee beyond the free tier. Caller holds the settlement transaction."""
    return _charge_capped(
        owner=owner,
        amount=amount,
        idempotency_key=f"byok-fee:{request_id}",
        kind=LedgerTransaction.Kind.BYOK_FEE,
        memo=f"BYOK fee, request {request_id}",
    )


def pool_reward_credit(*, donor: BillingOwner, amount: int, request_id: str) -> int:
    """Credit a donor's main balance from the pool-rewards account."""
    if amount <= 0:
        return 0
    ledger_transfer(
        source=platform_account(Account.Kind.POOL_REWARDS),
        destination=account_for_owner(owner=donor, kind=Account.Kind.MAIN),
        amount=amount,
        idempotency_key=f"pool-reward:{request_id}",
        kind=LedgerTransaction.Kind.POOL_REWARD,
        memo=f"pool request {request_id}",
    )
    return amount


def byok_request_count(*, owner: BillingOwner, at: datetime) -> int:
    """Count one BYOK request for the owner's calendar month (UTC); returns the month's count so far."""
    lookup = {**owner_filter(owner), "month": month_start(at)}
    lookup = {k: v for k, v in lookup.items() if v is not None}
    counter, _ = ByokMonthlyUsage.objects.get_or_create(**lookup)
    ByokMonthlyUsage.objects.filter(pk=counter.pk).update(requests=F("requests") + 1)
    return ByokMonthlyUsage.objects.values_list("requests", flat=True).get(pk=counter.pk)
