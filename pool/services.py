"""Writes for the gateway: plan a request's funds, pick a key, settle exactly once.

Each function here runs in one database transaction and is called from the
async proxy through `pool.db.db_call`.
"""

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction

from accounts.models import ApiKey, Organization, User
from accounts.services import api_key_touch
from billing import services as billing
from billing.money import percent_of, token_cost
from billing.selectors import byok_requests_in_month, month_start
from billing.services import InsufficientFunds
from exchange.selectors import exchange_routing_enabled, payout_rate_resolve
from exchange.services import exchange_earning_credit
from keys.crypto import decrypt_secret
from keys.models import Provider
from keys.services import provider_key_release, provider_key_stats_add
from pool import errors
from pool.errors import GatewayError
from pool.models import RequestRecord
from pool.selectors import (
    Caller,
    Target,
    byok_candidates,
    caller_get,
    month_spend,
    platform_candidates,
    pool_candidates,
    pool_gate_open,
    target_get,
)
from pool.sql import lru_pick

logger = logging.getLogger(__name__)
Route = RequestRecord.Route
Outcome = RequestRecord.Outcome
PICK_RETRIES = 20


# --- planning -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    routes: tuple[str, ...]  # route kinds to try, in order: ("pool",), ("byok", "platform"), ("platform",)
    include_exchange: bool


def _billing_owner(caller: Caller) -> User | Organization:
    """A reference to the billing owner by primary key: billing needs which owner, not its row."""
    return Organization(pk=caller.organization_id) if caller.organization_id else User(pk=caller.user_id)


def worst_case_cost(*, target: Target, prompt_tokens: int, max_tokens: int) -> int:
    return token_cost(prompt_tokens, target.input_price) + token_cost(max_tokens, target.output_price)


def request_plan(
    *, caller: Caller, target: Target, request_id: str, worst_case: int, platform_only: bool, at: datetime
) -> Plan:
    """Decide the routes to try and reserve the money the first one needs; refuse up front (403/402)."""
    if target.pool:
        if not target.pool_cleared:
            raise GatewayError(403, errors.POOL_PROVIDER_NOT_CLEARED.format(provider=target.provider_slug),
                               type="permission_error", code="pool_provider_not_cleared")
        if not pool_gate_open(user_id=caller.user_id):
            raise GatewayError(403, errors.POOL_GATE, type="permission_error", code="pool_membership_required")
        return Plan(routes=(Route.POOL,), include_exchange=False)

    include_exchange = (
        not platform_only and caller.key_pool_mode != ApiKey.PoolMode.PLATFORM_ONLY and exchange_routing_enabled()
    )
    if byok_candidates(caller=caller, target=target).exists():
        routes = (Route.BYOK, Route.PLATFORM) if caller.byok_fallback else (Route.BYOK,)
    else:
        routes = (Route.PLATFORM,)
    funds_reserve(caller=caller, route=routes[0], request_id=request_id, worst_case=worst_case, at=at)
    return Plan(routes=routes, include_exchange=include_exchange)


def funds_reserve(*, caller: Caller, route: str, request_id: str, worst_case: int, at: datetime) -> None:
    """Hold what the route may charge: the cost (platform) or the BYOK fee beyond the free tier; else 402."""
    owner = _billing_owner(caller)
    if route == Route.PLATFORM:
        amount = worst_case
        if caller.monthly_limit is not None:
            since = datetime.combine(month_start(at), datetime.min.time(), tzinfo=dt_timezone.utc)
            if month_spend(api_key_id=caller.api_key_id, since=since) + amount > caller.monthly_limit:
                raise GatewayError(402, errors.MONTHLY_LIMIT, type="insufficient_quota", code="monthly_limit_reached")
    elif route == Route.BYOK:
        if byok_requests_in_month(owner=owner, at=at) < settings.HEADROOM_BYOK_FREE_REQUESTS:
            return
        amount = percent_of(worst_case, Decimal(settings.HEADROOM_BYOK_FEE_PERCENT))
    else:
        return
    try:
        billing.hold_place(owner=owner, amount=amount, request_id=_hold_id(request_id, route))
    except InsufficientFunds:
        raise GatewayError(402, errors.INSUFFICIENT_BALANCE, type="insufficient_quota", code="insufficient_balance") from None


# The routes that reserve money: BYOK (its fee, past the free tier) and the platform. A request that
# fails over from one to the other holds for both, each under its own id.
HELD_ROUTES = (Route.BYOK, Route.PLATFORM)


def _hold_id(request_id: str, route: str) -> str:
    return f"{request_id}:{route}"


# --- the first database hop of a request -------------------------------------------------------


@dataclass(frozen=True)
class Begun:
    caller: Caller
    target: Target
    plan: Plan
    worst_case: int
    first_key: "PickedKey | None"


def caller_open(*, raw_key: str) -> Caller:
    """Authenticate a gateway API key and apply its own rate limit; 401 or 429 otherwise."""
    found = caller_get(raw_key)
    if found is None:
        raise GatewayError(401, errors.UNAUTHENTICATED, type="authentication_error", code="invalid_api_key")
    caller, api_key = found
    api_key_touch(api_key=api_key)
    _rate_limit(caller)
    return caller


def _rate_limit(caller: Caller) -> None:
    """A fixed one-minute window per API key, in the shared cache (Redis in production)."""
    limit = settings.HEADROOM_RATE_LIMIT_PER_MINUTE
    if limit <= 0:
        return
    now = time.time()
    key = f"rl:{caller.api_key_id}:{int(now // 60)}"
    try:
        cache.add(key, 0, timeout=120)
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        count = 1
    except Exception as error:  # the cache (Redis) is down: serve rather than refuse everyone
        logger.warning("rate limit not applied: cache unavailable (%s)", error.__class__.__name__)
        return
    if count > limit:
        raise GatewayError(429, errors.RATE_LIMITED, type="rate_limit_error", code="rate_limited",
                           headers={"retry-after": str(60 - int(now) % 60)})


def request_begin(
    *, raw_key: str, model: str, request_id: str, at: datetime, prompt_tokens: int, max_tokens: int,
    platform_only: bool,
) -> Begun:
    """Everything before the first upstream call, in one thread hop: who (401/429), which model
    (404), which routes and the money they need (403/402), and the first key."""
    caller = caller_open(raw_key=raw_key)
    target = target_get(model)
    if target is None:
        raise GatewayError(404, errors.MODEL_UNKNOWN.format(model=model[:200]), param="model", code="model_not_found")
    worst_case = worst_case_cost(target=target, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
    plan = request_plan(
        caller=caller, target=target, request_id=request_id, worst_case=worst_case, platform_only=platform_only, at=at
    )
    first_key = key_pick(caller=caller, target=target, route=plan.routes[0], include_exchange=plan.include_exchange)
    return Begun(caller=caller, target=target, plan=plan, worst_case=worst_case, first_key=first_key)


# --- key selection ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PickedKey:
    key_id: int
    secret: str
    route: str  # pool, byok, platform or exchange
    owner_user_id: int | None
    owner_org_id: int | None
    had_errors: bool = False  # counters to reset once it answers (saves a write on the common path)


def key_pick(
    *, caller: Caller, target: Target, route: str, include_exchange: bool, exclude: tuple[int, ...] = ()
) -> PickedKey | None:
    """Take the least recently used candidate key for the route, atomically across processes.

    One statement (pool.sql.lru_pick) locks the key row with SKIP LOCKED, so concurrent picks never
    wait on one another nor take the same key, stamps a strictly increasing `lru_seq`, counts the
    request in flight, and commits before the upstream call. When every candidate is held by picks
    in progress, it retries briefly rather than report "no key". None means no candidate exists.
    """
    if route == Route.POOL:
        candidates = pool_candidates(caller=caller, target=target)
    elif route == Route.BYOK:
        candidates = byok_candidates(caller=caller, target=target)
    else:
        candidates = platform_candidates(caller=caller, target=target, include_exchange=include_exchange)
    candidates = candidates.exclude(pk__in=exclude)

    for attempt in range(PICK_RETRIES):
        row = lru_pick(candidates)
        if row is not None:
            kind = route
            if route == Route.PLATFORM and not row["is_platform"] and row["exchange"]:
                kind = Route.EXCHANGE
            return PickedKey(
                key_id=row["id"],
                secret=decrypt_secret(row["secret_ciphertext"]),
                route=kind,
                owner_user_id=row["owner_user_id"],
                owner_org_id=row["owner_org_id"],
                had_errors=bool(row["consecutive_429s"] or row["failure_count"]),
            )
        if not candidates.exists():
            return None
        time.sleep(0.002 * (attempt + 1))
    return None


# --- settlement ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False


@dataclass(frozen=True)
class Settlement:
    request_id: str
    created_at: datetime
    caller: Caller
    target: Target
    task: str
    stream: bool
    outcome: str
    usage: Usage
    key: PickedKey | None
    upstream_status: int | None = None
    error_code: str = ""
    latency_ms: int = 0
    ttfb_ms: int | None = None


@dataclass(frozen=True)
class Receipt:
    request_id: str
    route: str | None
    cost: int
    charged: int
    reward: int
    is_byok: bool


def _receipt(record: RequestRecord) -> Receipt:
    return Receipt(
        request_id=record.request_id,
        route=record.route,
        cost=record.cost,
        charged=record.charged,
        reward=record.reward,
        is_byok=record.route == Route.BYOK,
    )


def _key_owner(key: PickedKey) -> User | Organization:
    return Organization(pk=key.owner_org_id) if key.owner_org_id else User(pk=key.owner_user_id)


def request_settle(*, s: Settlement) -> Receipt:
    """Settle one request exactly once: money, the request record, the key's counters.

    Idempotent on `request_id`: a second call returns the first receipt and
    moves nothing (every posting is keyed by the request id, and the record's
    unique request id rolls back a racing duplicate whole). Rewards and
    earnings are paid only for a succeeded request.
    """
    existing = RequestRecord.objects.filter(request_id=s.request_id).first()
    if existing is not None:
        return _receipt(existing)
    try:
        with transaction.atomic():
            record = _settle(s)
    except IntegrityError:
        existing = RequestRecord.objects.filter(request_id=s.request_id).first()
        if existing is None:
            raise
        return _receipt(existing)
    finally:
        if s.key is not None:
            # Its own short statement after the settlement commits: the LRU pick locks this row.
            provider_key_release(key_id=s.key.key_id)
    return _receipt(record)


def _settle(s: Settlement) -> RequestRecord:
    target, key, usage = s.target, s.key, s.usage
    cost = token_cost(usage.prompt_tokens, target.input_price) + token_cost(usage.completion_tokens, target.output_price)
    succeeded = s.outcome == Outcome.SUCCEEDED
    route = key.route if key else None
    charged = fee = reward = 0
    rate = None

    if route is not None:
        owner = _billing_owner(s.caller)
        if route in (Route.PLATFORM, Route.EXCHANGE):
            # Delivered tokens are paid for, also when the stream was cut or the client left.
            charged = billing.usage_charge(owner=owner, amount=cost, request_id=s.request_id)
            if route == Route.EXCHANGE and succeeded and charged:
                reward, rate = _exchange_earning(s, settled_cost=charged)
        elif route == Route.BYOK and succeeded:
            count = billing.byok_request_count(owner=owner, at=s.created_at)
            if count > settings.HEADROOM_BYOK_FREE_REQUESTS:
                fee = billing.byok_fee_charge(
                    owner=owner,
                    amount=percent_of(cost, Decimal(settings.HEADROOM_BYOK_FEE_PERCENT)),
                    request_id=s.request_id,
                )
                charged = fee
        elif route == Route.POOL and succeeded:
            reward = billing.pool_reward_credit(
                donor=_key_owner(key),
                amount=percent_of(cost, Decimal(settings.HEADROOM_POOL_REWARD_PERCENT)),
                request_id=s.request_id,
            )
    billing.hold_release(request_ids=[_hold_id(s.request_id, route) for route in HELD_ROUTES])

    if key is not None and succeeded:
        provider_key_stats_add(
            key_id=key.key_id,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            credits_earned=reward,
        )

    return RequestRecord.objects.create(
        request_id=s.request_id,
        created_at=s.created_at,
        api_key_id=s.caller.api_key_id,
        requester_id=s.caller.user_id,
        organization_id=s.caller.organization_id,
        route=route or Route.PLATFORM,
        task=s.task,
        provider_id=target.provider_id,
        model=target.model,
        provider_key_id=key.key_id if key else None,
        stream=s.stream,
        outcome=s.outcome,
        upstream_status=s.upstream_status,
        error_code=s.error_code[:64],
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        usage_estimated=usage.estimated,
        input_price=target.input_price,
        output_price=target.output_price,
        cost=cost,
        charged=charged,
        fee=fee,
        reward=reward,
        payout_rate=rate,
        latency_ms=s.latency_ms,
        ttfb_ms=s.ttfb_ms,
    )


def _exchange_earning(s: Settlement, *, settled_cost: int) -> tuple[int, Decimal | None]:
    owner = _key_owner(s.key)
    owner_user = owner if isinstance(owner, User) else None
    rate = payout_rate_resolve(user=owner_user, provider=Provider(pk=s.target.provider_id), task=s.task)
    txn = exchange_earning_credit(
        key_owner=owner,
        provider_key_id=s.key.key_id,
        request_id=s.request_id,
        settled_cost=settled_cost,
        rate=rate,
    )
    earned = -txn.entries.filter(amount__lt=0).values_list("amount", flat=True).first() if txn else 0
    return earned, rate.percent
