"""Reads for accounts and API keys, scoped to who may see them."""

from django.db.models import Q, QuerySet
from django.http import Http404

from accounts.models import ApiKey, Organization, User
from accounts.services import API_KEY_PATTERN, api_key_hash

# The keys that may call the gateway (/v1): unrevoked, of an active member, with the `gateway` scope.
GATEWAY_CALLER = Q(revoked_at__isnull=True, user__is_active=True, scopes__contains=[ApiKey.Scope.GATEWAY])


def api_key_get_by_raw(raw_key: str) -> ApiKey | None:
    """The active API key matching a raw key, or None (malformed, unknown or revoked)."""
    if not API_KEY_PATTERN.fullmatch(raw_key):
        return None
    return (
        ApiKey.objects.select_related("user", "organization")
        .filter(hashed_key=api_key_hash(raw_key), revoked_at__isnull=True, user__is_active=True)
        .first()
    )


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user).order_by("revoked_at", "-created_at")


def api_key_get_for_user(*, user: User, key_id: int) -> ApiKey:
    """The user's own key; someone else's key is indistinguishable from a missing one."""
    try:
        return ApiKey.objects.get(pk=key_id, user=user)
    except (ApiKey.DoesNotExist, ValueError, TypeError):
        raise Http404("No such API key.") from None


def organization_list(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).order_by("name")
