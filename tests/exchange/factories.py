from decimal import Decimal

from exchange.models import PayoutRateRule
from keys.models import Provider
from tests.keys.factories import ProviderFactory


def exchange_provider(slug: str, **fields) -> Provider:
    """A provider with a balance API, so it supports the exchange."""
    return ProviderFactory(slug=slug, balance_api=Provider.BalanceApi.DEEPSEEK, **fields)


def rule(percent: str, *, user=None, provider=None, task: str = "") -> PayoutRateRule:
    return PayoutRateRule.objects.create(user=user, provider=provider, task=task, percent=Decimal(percent))
