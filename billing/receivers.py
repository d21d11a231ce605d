"""Billing's answers to other apps' signals: each receiver calls one service and nothing else."""

from accounts.models import User
from billing.services import signup_credit_grant


def signup_credit_on_signup(sender, *, user: User, **kwargs) -> None:
    """A new account gets the signup credit (idempotent per user)."""
    signup_credit_grant(user=user)
