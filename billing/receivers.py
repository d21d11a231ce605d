"""Billing's answers to other apps' signals: each receiver calls one service and nothing else."""

from accounts.models import User
from billing.services import signup_credit_grant


def signup_credit_on_email_verified(sender, *, user: User, **kwargs) -> None:
    """A member who has proven an e-mail address gets the signup credit, once per user whatever they
    verify later: an unverified sign-up is free to make, so it earns nothing."""
    signup_credit_grant(user=user)
