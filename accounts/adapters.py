"""allauth hooks: the one place sign-up calls into Headroom's services."""

from allauth.account.adapter import DefaultAccountAdapter
from django.db import transaction

from accounts.services import user_signup_complete


class AccountAdapter(DefaultAccountAdapter):
    def save_user(self, request, user, form, commit=True):
        if not commit:
            return super().save_user(request, user, form, commit=False)
        # The user and their signup credit commit together or not at all; the
        # grant is idempotent per user, so a repeated hook cannot pay twice.
        with transaction.atomic():
            user = super().save_user(request, user, form, commit=True)
            user_signup_complete(user=user)
        return user
