"""allauth hooks: the one place sign-up and verification call into Headroom's services."""

from allauth.account.adapter import DefaultAccountAdapter
from django.db import transaction


class AccountAdapter(DefaultAccountAdapter):
    def confirm_email(self, request, email_address) -> bool:
        # allauth sends `email_confirmed` (accounts.receivers: the welcome) from inside this call: the
        # verified address and the signup credit commit together or not at all.
        with transaction.atomic():
            return super().confirm_email(request, email_address)
