"""Reads of balances and ledger invariants."""

from dataclasses import dataclass
from datetime import date, datetime
from datetime import timezone as dt_timezone

from django.db.models import Count, Q, Sum

from accounts.models import Organization, User
from billing.models import Account, LedgerEntry, LedgerTransaction

BillingOwner = User | Organization


@dataclass(frozen=True)
class Balances:
    main: int
    frozen: int


def month_start(at: datetime) -> date:
    """The first day of `at`'s calendar month in UTC: BYOK months and spend limits reset at 00:00 UTC."""
    if at.tzinfo is not None:
        at = at.astimezone(dt_timezone.utc)
    return date(at.year, at.month, 1)


def owner_filter(owner: BillingOwner) -> dict:
    """The Account lookup for a billing owner: a user or an organization."""
    if isinstance(owner, Organization):
        return {"organization": owner, "user": None}
    if isinstance(owner, User):
        return {"user": owner, "organization": None}
    raise TypeError(f"A billing owner is a User or an Organization, not {type(owner).__name__}.")


def balances_for_owner(*, owner) -> Balances:
    """Main and frozen balance of a user or organization (0 where no account exists yet)."""
    rows = dict(Account.objects.filter(**owner_filter(owner)).values_list("kind", "balance"))
    return Balances(main=rows.get(Account.Kind.MAIN, 0), frozen=rows.get(Account.Kind.FROZEN, 0))


def ledger_violations(*, limit: int = 50) -> list[str]:
    """Every ledger invariant, re-derived from the entries. Empty means the ledger is sound.

    1. each transaction has at least two entries and they sum to zero;
    2. all entries together sum to zero;
    3. each account's cached balance equals the sum of its entries, and its
       cached `held` the sum of its open holds;
    4. no account that may not go negative is below zero.
    """
    problems: list[str] = []
    unbalanced = (
        LedgerTransaction.objects.annotate(total=Sum("entries__amount"), legs=Count("entries"))
        .filter(Q(legs__lt=2) | ~Q(total=0))
        .values_list("pk", "idempotency_key", "total", "legs")[:limit]
    )
    for pk, key, total, legs in unbalanced:
        problems.append(f"transaction {pk} ({key}) has {legs} entries summing to {total or 0}, not zero")

    overall = LedgerEntry.objects.aggregate(total=Sum("amount"))["total"] or 0
    if overall != 0:
        problems.append(f"all entries sum to {overall}, not zero")

    drifted = (
        Account.objects.annotate(entries_total=Sum("entries__amount"))
        .values_list("pk", "kind", "balance", "entries_total")
        .iterator()
    )
    for pk, kind, balance, entries_total in drifted:
        if balance != (entries_total or 0):
            problems.append(f"account {pk} ({kind}) caches {balance} but its entries sum to {entries_total or 0}")
            if len(problems) >= limit:
                return problems

    held = Account.objects.annotate(
        open_holds=Sum("holds__amount")
    ).values_list("pk", "kind", "held", "open_holds")
    for pk, kind, cached, open_holds in held.iterator():
        if cached != (open_holds or 0):
            problems.append(f"account {pk} ({kind}) caches {cached} held but its holds sum to {open_holds or 0}")

    for pk, kind, balance in Account.objects.filter(may_go_negative=False, balance__lt=0).values_list(
        "pk", "kind", "balance"
    )[:limit]:
        problems.append(f"account {pk} ({kind}) is below its floor: {balance}")
    return problems
