"""Reads for the gateway: who is calling, which model, which keys may serve.

Everything here is synchronous ORM; the async proxy calls it through
`pool.db.db_call`, one thread hop per phase.
"""

from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import ApiKey, Membership
from accounts.selectors import api_key_get_by_raw
from keys.models import Provider, ProviderKey, ProviderKeyStats, ProviderModel
from keys.selectors import BYOK, IN_POOL, ON_EXCHANGE, PLATFORM, ROUTABLE_MODEL, provider_model_get_routable
from pool.models import RequestRecord

POOL_SUFFIX = "-pool"


@dataclass(frozen=True)
class Caller:
    api_key_id: int
    user_id: int
    organization_id: int | None
    key_pool_mode: str
    byok_fallback: bool
    monthly_limit: int | None


@dataclass(frozen=True)
class Target:
    requested: str  # what the client sent, e.g. "groq-pool/llama-3.1-8b-instant"
    provider_id: int
    provider_slug: str
    base_url: str
    model: str  # the provider's own name for it
    input_price: int
    output_price: int
    pool: bool
    pool_cleared: bool


def caller_get(raw_key: str) -> tuple[Caller, ApiKey] | None:
    api_key = api_key_get_by_raw(raw_key)
    if api_key is None:
        return None
    return (
        Caller(
            api_key_id=api_key.pk,
            user_id=api_key.user_id,
            organization_id=api_key.organization_id,
            key_pool_mode=api_key.key_pool_mode,
            byok_fallback=api_key.byok_fallback,
            monthly_limit=api_key.monthly_limit,
        ),
        api_key,
    )


def target_get(requested: str) -> Target | None:
    """The routable model behind `provider/model` or `provider-pool/model`, or None."""
    slug, sep, name = requested.partition("/")
    if not sep or not slug or not name:
        return None
    pool = slug.endswith(POOL_SUFFIX)
    if pool:
        slug = slug[: -len(POOL_SUFFIX)]
    row = provider_model_get_routable(provider_slug=slug, model_name=name)
    if row is None:
        return None
    return Target(
        requested=requested,
        provider_id=row.provider_id,
        provider_slug=row.provider.slug,
        base_url=row.provider.base_url.rstrip("/"),
        model=row.name,
        input_price=row.input_price,
        output_price=row.output_price,
        pool=pool,
        pool_cleared=row.provider.pool_clearance == Provider.PoolClearance.CLEARED,
    )


def _requester_org_ids(user_id: int) -> list[int]:
    return list(Membership.objects.filter(user_id=user_id).values_list("organization_id", flat=True))


def pool_gate_open(*, user_id: int) -> bool:
    """The reciprocity gate, checked on every request: the member has a key in the pool now."""
    return ProviderKey.objects.filter(IN_POOL, owner_user_id=user_id).exists()


def pool_candidates(*, caller: Caller, target: Target) -> QuerySet[ProviderKey]:
    """Pool keys for the provider, never the requester's own (nor their organizations')."""
    return (
        ProviderKey.objects.filter(IN_POOL, provider_id=target.provider_id)
        .exclude(owner_user_id=caller.user_id)
        .exclude(owner_org_id__in=_requester_org_ids(caller.user_id))
    )


def byok_candidates(*, caller: Caller, target: Target) -> QuerySet[ProviderKey]:
    """The requester's own (or, for an organization's API key, the organization's) BYOK keys."""
    owner = Q(owner_org_id=caller.organization_id) if caller.organization_id else Q(owner_user_id=caller.user_id)
    return ProviderKey.objects.filter(BYOK, owner, provider_id=target.provider_id)


def platform_candidates(*, caller: Caller, target: Target, include_exchange: bool) -> QuerySet[ProviderKey]:
    """Platform keys, plus other members' exchange keys unless they are left out."""
    which = PLATFORM
    if include_exchange:
        which = which | (ON_EXCHANGE & ~Q(owner_user_id=caller.user_id))
    return ProviderKey.objects.filter(which, provider_id=target.provider_id)


def month_spend(*, api_key_id: int, since) -> int:
    return (
        RequestRecord.objects.filter(api_key_id=api_key_id, created_at__gte=since).aggregate(s=Sum("charged"))["s"]
        or 0
    )


def routable_models() -> list[str]:
    """Model ids for GET /v1/models: every priced model, plus `-pool` ids for cleared providers."""
    ids: list[str] = []
    rows = ProviderModel.objects.filter(ROUTABLE_MODEL).values_list("provider__slug", "name", "provider__pool_clearance")
    for slug, name, clearance in rows.order_by("provider__slug", "name"):
        ids.append(f"{slug}/{name}")
        if clearance == Provider.PoolClearance.CLEARED:
            ids.append(f"{slug}{POOL_SUFFIX}/{name}")
    return ids


def request_list_for_user(*, user_id: int) -> QuerySet[RequestRecord]:
    """The caller's own requests, newest first."""
    return (
        RequestRecord.objects.filter(requester_id=user_id)
        .select_related("provider")
        .order_by("-created_at", "-id")
    )


def key_daily_series(*, key_id: int, days: int = 30) -> list[dict]:
    """Per-day aggregates of what a key served: the donor's chart. Never who asked or what."""
    since = timezone.now() - timedelta(days=days)
    return list(
        RequestRecord.objects.filter(provider_key_id=key_id, outcome=RequestRecord.Outcome.SUCCEEDED, created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(
            requests=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            credits=Sum("reward"),
        )
        .order_by("day")
    )


def pool_provider_aggregates() -> list[dict]:
    """The public pool listing: per cleared provider, only aggregates over its donated keys."""
    keys_per_provider = {
        row["provider__slug"]: row["active_keys"]
        for row in ProviderKey.objects.filter(
            donate_to_pool=True, status=ProviderKey.Status.ACTIVE,
            provider__pool_clearance=Provider.PoolClearance.CLEARED,
        )
        .values("provider__slug")
        .annotate(active_keys=Count("id"))
    }
    served = {
        row["key__provider__slug"]: row
        for row in ProviderKeyStats.objects.filter(key__donate_to_pool=True)
        .values("key__provider__slug")
        .annotate(
            requests=Sum("requests_served"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
        )
    }
    rows = []
    for provider in Provider.objects.filter(pool_clearance=Provider.PoolClearance.CLEARED, is_active=True).order_by("slug"):
        stats = served.get(provider.slug, {})
        rows.append(
            {
                "provider": provider.slug,
                "name": provider.name,
                "active_keys": keys_per_provider.get(provider.slug, 0),
                "requests_served": stats.get("requests") or 0,
                "tokens_served": (stats.get("prompt_tokens") or 0) + (stats.get("completion_tokens") or 0),
            }
        )
    return rows
