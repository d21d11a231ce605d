"""Writes for the exchange: crediting earnings, setting the global rate."""

from decimal import Decimal, InvalidOperation

from django.db import IntegrityError, transaction

from accounts.models import Organization, User
from billing.models import Account, LedgerTransaction
from billing.money import percent_of
from billing.services import account_for_owner, ledger_transfer, platform_account
from core.errors import ServiceError
from exchange.models import ExchangeEarning, PayoutRateRule
from exchange.selectors import PERCENT_QUANTUM, ResolvedRate

EARNING_NEGATIVE_COST = "A settled cost cannot be negative."
EARNING_BAD_RATE = "A payout rate is a percentage from 0 to 100."
EARNING_NO_REQUEST_ID = "An earning needs the request id it is for."
GLOBAL_RATE_INVALID = "The global rate is a percentage from 0 to 100 with at most two decimals."


class ExchangeError(ServiceError):
    """A refused exchange operation. Nothing was written; the message is safe to show."""


def exchange_earning_credit(
    *,
    key_owner: User | Organization,
    provider_key_id: int,
    request_id: str,
    settled_cost: int,
    rate: ResolvedRate,
) -> LedgerTransaction | None:
    """Credit an exchange key's owner their cut of one successful request, exactly once.

    Call after the request has settled, with its *settled* cost (never the
    estimate) and the rate resolved for it; the caller holds the database
    transaction the settlement runs in. Books `rate.percent` % of the cost
    (half-even, to the nanodollar) from the platform's exchange-payouts account
    to the owner's frozen balance and records an ExchangeEarning carrying the
    rate's percent, rule and scope as they were, so later rule changes never
    rewrite it. At 0% (or a cost too small to earn a nanodollar) the earning is
    recorded with amount 0 and no money moves: the return is None.

    A replay with the same request id returns the first result (and moves
    nothing), whatever arguments it brings.
    """
    if not request_id:
        raise ExchangeError(EARNING_NO_REQUEST_ID)
    if not isinstance(settled_cost, int) or isinstance(settled_cost, bool) or settled_cost < 0:
        raise ExchangeError(EARNING_NEGATIVE_COST)
    if not isinstance(rate.percent, Decimal) or not (0 <= rate.percent <= 100):
        raise ExchangeError(EARNING_BAD_RATE)

    existing = ExchangeEarning.objects.filter(request_id=request_id).select_related("ledger_transaction").first()
    if existing is not None:
        return existing.ledger_transaction

    frozen = account_for_owner(owner=key_owner, kind=Account.Kind.FROZEN)
    amount = percent_of(settled_cost, rate.percent) if rate.percent > 0 else 0
    try:
        with transaction.atomic():
            txn = None
            if amount > 0:
                txn = ledger_transfer(
                    source=platform_account(Account.Kind.EXCHANGE_PAYOUTS),
                    destination=frozen,
                    amount=amount,
                    idempotency_key=f"exchange-earning:{request_id}",
                    kind=LedgerTransaction.Kind.EXCHANGE_EARNING,
                    memo=f"Exchange earning at {rate.percent}% ({rate.scope})",
                )
            ExchangeEarning.objects.create(
                provider_key_id=provider_key_id,
                account=frozen,
                request_id=request_id,
                settled_cost=settled_cost,
                rate_percent=rate.percent,
                rate_rule_id=rate.rule_id,
                rate_scope=rate.scope,
                amount=amount,
                ledger_transaction=txn,
            )
            return txn
    except IntegrityError:
        # The same request credited concurrently: its row committed first, and
        # the ledger posting above returned that one's transaction (moving
        # nothing), so the savepoint rolled back nothing of value.
        earning = ExchangeEarning.objects.filter(request_id=request_id).select_related("ledger_transaction").first()
        if earning is None:
            raise
        return earning.ledger_transaction


def payout_rate_global_set(*, percent: Decimal | str) -> tuple[PayoutRateRule, Decimal | None]:
    """Set the global payout rate; returns the rule and the percent it had before (None: no rule).

    0% switches the exchange off: exchange keys leave routing, whatever user
    rules say. The admin confirms before crossing 0% either way.
    """
    try:
        value = Decimal(str(percent)).quantize(PERCENT_QUANTUM)
    except InvalidOperation:
        raise ExchangeError(GLOBAL_RATE_INVALID) from None
    if not value.is_finite() or not (0 <= value <= 100) or value != Decimal(str(percent)):
        raise ExchangeError(GLOBAL_RATE_INVALID)
    with transaction.atomic():
        rule = (
            PayoutRateRule.objects.select_for_update()
            .filter(user__isnull=True, provider__isnull=True)
            .first()
        )
        if rule is None:
            rule = PayoutRateRule.objects.create(percent=value, note="Global default")
            return rule, None
        previous = rule.percent
        rule.percent = value
        rule.save(update_fields=["percent", "updated_at"])
        return rule, previous
