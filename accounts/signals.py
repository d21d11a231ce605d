"""What accounts tells the apps above it. Apps below may not be imported here (import-linter contract)."""

from django.dispatch import Signal

# Sent with `user=` each time one of a user's e-mail addresses is verified (allauth's code or link, the
# admin's "mark verified", `user_create(verified=True)`), inside the transaction that verified it when
# there is one. Receivers must be idempotent: a member may verify a second address, submit a code twice,
# or race two confirmations.
user_email_verified = Signal()
