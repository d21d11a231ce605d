"""Reads for the gateway's API and the rare paths of its hot path.

The hot path's own reads (who is calling, which model, which keys may serve)
are one statement in pool.hotpath, compiled from the rules in keys.selectors;
what is here is synchronous ORM, called from the proxy through
`pool.hotpath.db.db_call` or from the management API.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.db.models import (
    BigIntegerField,
    Count,
    DecimalField,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
)
from django.db.models.functions import TruncDate, TruncMonth
from django.utils import timezone

from accounts.models import ApiKey
from billing.models import ApiKeyMonthlySpend
from core.money import percent_of
from exchange.models import ExchangeEarning
from keys.models import Provider, ProviderKey, ProviderKeyStats, ProviderModel
from keys.selectors import ROUTABLE_MODEL
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
    last_used_at: datetime | None = None
    account_id: int | None = None  # the billing owner's main account, None until its first use


@dataclass(frozen=True)
class Target:
    requested: str  # what the client sent, e.g. "groq-pool/llama-3.1-8b-instant"
    provider_id: int
    provider_slug: str
    base_url: str
    model: str  # the provider's own name for it
    input_price: int
    output_price: int


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


# --- ledger_check -------------------------------------------------------------------------------------


def earning_record_violations(*, limit: int = 50) -> list[str]:
    """Exchange earnings that do not match their request's record (SPEC "Served ≤ collected"): an
    earning for a request that did not succeed on an exchange key or has no record; an earning whose
    `collected` is not what the request was charged; an amount above the rate of that charge (also for
    rows recorded before `collected` was kept). Registered with billing's `ledger_check` (pool.apps):
    pool sits above exchange and billing, so it is the one app that may read both tables."""
    record = RequestRecord.objects.filter(request_id=OuterRef("request_id"))
    suspects = (
        ExchangeEarning.objects.annotate(
            r_route=Subquery(record.values("route")[:1]),
            r_outcome=Subquery(record.values("outcome")[:1]),
            r_charged=Subquery(record.values(c=F("charged") - F("fee"))[:1], output_field=BigIntegerField()),
        )
        .annotate(
            amount_x100=ExpressionWrapper(F("amount") * 100, output_field=BigIntegerField()),
            rate_x_charged=ExpressionWrapper(
                F("r_charged") * F("rate_percent"), output_field=DecimalField(max_digits=40, decimal_places=2)
            ),
        )
        .filter(
            Q(r_route__isnull=True) | ~Q(r_route=RequestRecord.Route.EXCHANGE)
            | ~Q(r_outcome=RequestRecord.Outcome.SUCCEEDED)
            | (Q(collected__isnull=False) & ~Q(collected=F("r_charged")))
            | Q(amount_x100__gt=F("rate_x_charged"))
        )
        .order_by("pk")
        .values_list("pk", "request_id", "r_route", "r_outcome", "r_charged", "collected", "rate_percent", "amount")
    )
    problems = []
    for pk, request_id, route, outcome, charged, collected, rate, amount in suspects.iterator():
        if route is None:
            problems.append(f"exchange earning {pk} names request {request_id}, which has no record")
        elif route != RequestRecord.Route.EXCHANGE or outcome != RequestRecord.Outcome.SUCCEEDED:
            problems.append(f"exchange earning {pk} (request {request_id}) is for a {outcome} {route} request")
        elif collected is not None and collected != charged:
            problems.append(f"exchange earning {pk} (request {request_id}) says {collected} was collected, its"
                            f" request was charged {charged}")
        elif amount > percent_of(charged, rate):
            problems.append(f"exchange earning {pk} (request {request_id}) earned {amount}, more than {rate}% of"
                            f" the {charged} its request was charged ({percent_of(charged, rate)})")
        else:
            continue
        if len(problems) >= limit:
            break
    return problems


def api_key_spend_violations(*, limit: int = 50) -> list[str]:
    """Month counters of API keys with a monthly spend limit (billing's, which the limit reads) that
    differ from what the key's requests of that month (UTC) were charged, fee included; a counter of a
    key without a limit. Registered with billing's `ledger_check` (pool.apps): the records are pool's."""
    limited = ApiKey.objects.filter(monthly_limit__isnull=False).values("pk")
    records = (
        RequestRecord.objects.filter(api_key__in=limited, charged__gt=0)
        .annotate(month=TruncMonth("created_at", tzinfo=dt_timezone.utc))
        .values("api_key_id", "month")
        .annotate(total=Sum("charged"))
    )
    expected = {(row["api_key_id"], row["month"].date()): row["total"] for row in records}
    counted = {(row.api_key_id, row.month): row.charged for row in ApiKeyMonthlySpend.objects.all()}
    problems = []
    for key, month in sorted(expected.keys() | counted.keys()):
        if expected.get((key, month), 0) != counted.get((key, month), 0):
            problems.append(f"API key {key}'s spend counter for {month:%Y-%m} is {counted.get((key, month), 0)},"
                            f" its requests were charged {expected.get((key, month), 0)}")
            if len(problems) >= limit:
                break
    return problems
