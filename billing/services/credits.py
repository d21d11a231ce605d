"""Credits granted by the platform."""

from django.conf import settings

from accounts.models import User
from billing.models import Account, LedgerTransaction
from core.money import parse_usd

from .ledger import account_for_owner, ledger_transfer, platform_account


def signup_credit_grant(*, user: User) -> LedgerTransaction:
    """Credit a new account's main balance with the signup credit, exactly once per user.

    Safe to call any number of times: the idempotency key is per user.
    """
    return ledger_transfer(
        source=platform_account(Account.Kind.SIGNUP_CREDITS),
        destination=account_for_owner(owner=user, kind=Account.Kind.MAIN),
        amount=parse_usd(settings.HEADROOM_SIGNUP_CREDIT),
        idempotency_key=f"signup-credit:user:{user.pk}",
        kind=LedgerTransaction.Kind.SIGNUP_CREDIT,
        memo="Welcome to Headroom",
    )
