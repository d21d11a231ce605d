"""Reads for payouts, scoped to the member who owns them."""

from django.db.models import QuerySet
from django.http import Http404

from accounts.models import User
from payouts.models import Conversion, Withdrawal, WithdrawalNetwork


def withdrawal_network_list() -> QuerySet[WithdrawalNetwork]:
    """Networks open for new withdrawal requests."""
    return WithdrawalNetwork.objects.filter(is_active=True)


def conversion_list(*, user: User) -> QuerySet[Conversion]:
    return Conversion.objects.filter(user=user).order_by("-created_at", "-pk")


def withdrawal_list(*, user: User) -> QuerySet[Withdrawal]:
    return Withdrawal.objects.filter(user=user).select_related("network").order_by("-created_at", "-pk")


def withdrawal_get_for_user(*, user: User, withdrawal_id: int) -> Withdrawal:
    """The member's own withdrawal; another member's is indistinguishable from a missing one."""
    try:
        return Withdrawal.objects.select_related("network").prefetch_related("events").get(pk=withdrawal_id, user=user)
    except (Withdrawal.DoesNotExist, ValueError, TypeError):
        raise Http404("No such withdrawal.") from None
