"""What accounts tells the apps above it. Apps below may not be imported here (import-linter contract)."""

from django.dispatch import Signal

# Sent with `user=` once a new account exists, inside the transaction that created it: a receiver that
# raises undoes the sign-up. Receivers must be idempotent (the allauth hook may run twice).
user_signed_up = Signal()
