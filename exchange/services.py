"""Writes for the exchange: setting the global rate. (Earnings are credited by the gateway's
settlement, pool.hotpath.settle.)"""

from decimal import Decimal, InvalidOperation

from django.db import transaction

from core.errors import ServiceError
from exchange.models import PayoutRateRule
from exchange.selectors import PERCENT_QUANTUM

GLOBAL_RATE_INVALID = "The global rate is a percentage from 0 to 100 with at most two decimals."


class ExchangeError(ServiceError):
    """A refused exchange operation. Nothing was written; the message is safe to show."""


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
