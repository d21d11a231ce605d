"""Accounts' answers to allauth's signals: each receiver calls one service and nothing else."""

from allauth.account.models import EmailAddress

from accounts.services import user_email_verified_complete


def welcome_on_email_confirmed(sender, *, email_address: EmailAddress, **kwargs) -> None:
    """allauth confirmed an address (code, link or the admin's action): the member has proven one."""
    user_email_verified_complete(user=email_address.user)
