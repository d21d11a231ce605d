"""Reads for payouts, scoped to the member who asked and the organizations they own.

History is per billing owner: a member's own rows (`organization` empty), or,
when asked for by organization, that organization's rows — visible to its
owners only, the same people who may move its balance.
"""

from django.db.models import Q, QuerySet
from django.http import Http404

from accounts.models import Membership, Organization, User
from billing.selectors import BillingOwner
from payouts.models import Conversion, Withdrawal, WithdrawalNetwork


def withdrawal_network_list() -> QuerySet[WithdrawalNetwork]:
    """Networks open for new withdrawal requests."""
    return WithdrawalNetwork.objects.filter(is_active=True)


def organization_for_member(*, user: User, slug: str) -> Organization | None:
    """The organization with that slug if the user belongs to it; None alike for a missing one or another's."""
    return Organization.objects.filter(slug=slug, memberships__user=user).first()


def organization_is_owned_by(*, organization: Organization, user: User) -> bool:
    return Membership.objects.filter(organization=organization, user=user, role=Membership.Role.OWNER).exists()


def organizations_owned_by(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(
        memberships__user=user, memberships__role=Membership.Role.OWNER
    ).order_by("name")


def _owner_rows(owner: BillingOwner) -> Q:
    if isinstance(owner, Organization):
        return Q(organization=owner)
    return Q(user=owner, organization__isnull=True)


def conversion_list(*, owner: BillingOwner) -> QuerySet[Conversion]:
    """The owner's conversions; the caller checks that the member may see an organization's."""
    return Conversion.objects.filter(_owner_rows(owner)).select_related("organization").order_by("-created_at", "-pk")


def withdrawal_list(*, owner: BillingOwner) -> QuerySet[Withdrawal]:
    """The owner's withdrawals; the caller checks that the member may see an organization's."""
    return (
        Withdrawal.objects.filter(_owner_rows(owner))
        .select_related("network", "organization")
        .order_by("-created_at", "-pk")
    )


def withdrawal_get_for_user(*, user: User, withdrawal_id: int) -> Withdrawal:
    """The member's own withdrawal, or one of an organization they own; any other is like a missing one."""
    owned = Membership.objects.filter(user=user, role=Membership.Role.OWNER).values("organization_id")
    scope = Q(user=user, organization__isnull=True) | Q(organization__in=owned)
    try:
        return (
            Withdrawal.objects.select_related("network", "organization")
            .prefetch_related("events")
            .filter(scope)
            .get(pk=withdrawal_id)
        )
    except (Withdrawal.DoesNotExist, ValueError, TypeError):
        raise Http404("No such withdrawal.") from None
