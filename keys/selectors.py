"""Reads for providers, models and provider keys, scoped to who may see them."""

from django.db.models import Q, QuerySet
from django.http import Http404

from accounts.models import Membership, User
from keys.models import (
    PoolConsent,
    Provider,
    ProviderKey,
    ProviderKeyTransition,
    ProviderModel,
)

Status = ProviderKey.Status


def provider_list() -> QuerySet[Provider]:
    return Provider.objects.filter(is_active=True).order_by("name")


def provider_get_by_slug(*, slug: str) -> Provider | None:
    return Provider.objects.filter(slug=slug, is_active=True).first()


# A model can be routed only while it and its provider are active and it has both prices.
ROUTABLE_MODEL = Q(provider__is_active=True, is_active=True, input_price__isnull=False, output_price__isnull=False)


def provider_model_get_routable(*, provider_slug: str, model_name: str) -> ProviderModel | None:
    """The priced, active model of an active provider, or None: an unpriced model is not routable."""
    return (
        ProviderModel.objects.select_related("provider")
        .filter(ROUTABLE_MODEL, provider__slug=provider_slug, name=model_name)
        .first()
    )


def _visible_to(user: User) -> Q:
    """A member sees their own keys and the keys of organizations they own."""
    owned_orgs = Membership.objects.filter(user=user, role=Membership.Role.OWNER).values("organization_id")
    return Q(owner_user=user) | Q(owner_org__in=owned_orgs)


def provider_key_list_for_user(*, user: User) -> QuerySet[ProviderKey]:
    return (
        ProviderKey.objects.filter(_visible_to(user))
        .select_related("provider", "stats", "owner_org")
        .order_by("-created_at", "-id")
    )


def provider_key_get_for_user(*, user: User, key_id: int) -> ProviderKey:
    """One of the member's keys; another member's key is indistinguishable from a missing one."""
    try:
        return provider_key_list_for_user(user=user).get(pk=key_id)
    except (ProviderKey.DoesNotExist, ValueError, TypeError):
        raise Http404("No such provider key.") from None


def provider_key_transitions(*, key: ProviderKey) -> QuerySet[ProviderKeyTransition]:
    return ProviderKeyTransition.objects.filter(key=key).order_by("at", "id")


def pool_consent_for_user(*, user: User, version: str) -> PoolConsent | None:
    return PoolConsent.objects.filter(user=user, consent_version=version).first()


# The rules for which keys may serve, as Q objects so that the gateway's pick can combine them in
# one statement (platform keys OR exchange keys) without subqueries.
# A member's key serves only while the member is active: deactivating (banning) a member takes their
# donated, listed and BYOK keys off every route at once. (A platform key has no owner; an organization's
# keys follow the organization, which has no deactivation of its own.)
OWNER_ACTIVE = Q(owner_user__isnull=True) | Q(owner_user__is_active=True)
ROUTABLE = Q(status=Status.ACTIVE, provider__is_active=True) & ~Q(secret_ciphertext="") & OWNER_ACTIVE
IN_POOL = ROUTABLE & Q(donate_to_pool=True, is_platform=False, provider__pool_clearance=Provider.PoolClearance.CLEARED)
EXCHANGE_KEY = Q(exchange=True, is_platform=False)
PLATFORM_KEY = Q(is_platform=True)
ON_EXCHANGE = ROUTABLE & EXCHANGE_KEY
PLATFORM = ROUTABLE & PLATFORM_KEY
# Platform keys and exchange keys together (the platform route): ROUTABLE once, so that the database
# scans the provider's keys once rather than once per kind.
PLATFORM_OR_EXCHANGE = ROUTABLE & (PLATFORM_KEY | EXCHANGE_KEY)
BYOK_KEY = Q(byok=True, is_platform=False)
BYOK = ROUTABLE & BYOK_KEY
# A member brought a BYOK key for the provider, whatever its state now (paused, exhausted, removed...):
# with `byok_fallback` off, such a member is served by their own keys or not at all.
BYOK_BROUGHT = BYOK_KEY


def provider_key_pool_candidates() -> QuerySet[ProviderKey]:
    """Keys the pool may route to: donated, ACTIVE, on an active provider cleared for the pool.

    A donated key of a `pending` provider is not here yet; it joins the moment an operator clears
    the provider, because this filter reads the clearance on every pick.
    """
    return ProviderKey.objects.filter(IN_POOL)


def provider_key_user_in_pool(*, user: User) -> bool:
    """The pool gate: the member owns at least one key that is in the pool now."""
    return provider_key_pool_candidates().filter(owner_user=user).exists()


def provider_key_exchange_candidates() -> QuerySet[ProviderKey]:
    """ACTIVE exchange keys of active providers (payout-rate and global switches are the caller's)."""
    return ProviderKey.objects.filter(ON_EXCHANGE)
