"""The gateway's rules for one request: who may ask, which routes, what to reserve, what it costs.

Async, called from the proxy (pool.gateway) on the event loop. The database
work of the hot path is two statements in pool.hotpath: `begin` (the plan, the
hold and the key pick) and `settle`. What the plan decides up front (the first
route, whether exchange keys may serve, the worst case and what to reserve,
why to refuse) is its SELECT's, and is read here from its row; this module
turns the row into the request's plan and errors, and decides everything after
the answer: the cost, the BYOK fee, the donor's reward and the exchange
earning. Rare paths (an account's first use, an exchange key's payout rate, a
replayed settlement) run ORM code in a worker thread (pool.hotpath.db.db_call).
"""

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.conf import settings

from accounts.models import Organization, User
from accounts.selectors import API_KEY_PATTERN
from accounts.services import LAST_USED_RESOLUTION, api_key_hash
from billing.models import Account, LedgerTransaction
from core.money import percent_of, token_cost
from billing.selectors import month_start
from billing.services import account_for_owner, platform_account
from exchange.selectors import payout_rate_resolve
from keys.crypto import decrypt_secret
from pool import errors
from pool.hotpath.begin import begin
from pool.hotpath.dtos import Ask, Credit, Earning, Hold, Refusal, SettleSpec
from pool.hotpath.hold import hold_id, hold_place
from pool.hotpath.pick import key_take
from pool.hotpath.plan import plan_read
from pool.hotpath.settle import PLATFORM_KINDS, PlatformAccountMissing, settle
from pool.hotpath.db import db_call
from pool.errors import GatewayError
from pool.models import RequestRecord
from pool.ratelimit import rate_limit
from pool.selectors import POOL_SUFFIX, Caller, Target

Route = RequestRecord.Route
Outcome = RequestRecord.Outcome
PICK_RETRIES = 20
# The routes that reserve money: BYOK (its fee, past the free tier) and the platform. A request that
# fails over from one to the other holds for both, each under its own id (pool.hotpath.hold.hold_id).
HELD_ROUTES = (Route.BYOK, Route.PLATFORM)


def _unauthenticated() -> GatewayError:
    return GatewayError(401, errors.UNAUTHENTICATED, type="authentication_error", code="invalid_api_key")


def _billing_owner(caller: Caller) -> User | Organization:
    return Organization(pk=caller.organization_id) if caller.organization_id else User(pk=caller.user_id)


# --- the first database hop of a request -------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    routes: tuple[str, ...]  # route kinds to try, in order: ("pool",), ("byok", "platform"), ("platform",)
    include_exchange: bool
    worst_case: int  # what the platform route reserves, should the request fail over to it
    over_limit: bool  # the platform route would cross the API key's monthly spend limit
    cap: int = 0  # the completion cap forwarded (0: no completion), held for on every route
    cap_field: str = "max_tokens"  # the field the provider reads it from
    month_from: datetime | None = None  # the monthly spend limit's month


@dataclass(frozen=True)
class PickedKey:
    key_id: int
    secret: str = field(repr=False)  # decrypted for the upstream call alone: never in a repr, log or trace
    route: str  # pool, byok, platform or exchange
    owner_user_id: int | None
    owner_org_id: int | None
    owner_main_account_id: int | None = None  # where a pool reward goes (None until the account's first use)
    owner_frozen_account_id: int | None = None  # where an exchange earning goes
    had_errors: bool = False  # counters to reset once it answers (saves a write on the common path)


@dataclass(frozen=True)
class Begun:
    caller: Caller
    target: Target
    plan: Plan
    first_key: PickedKey | None
    first_busy: bool = False  # the first route has keys, but each was held by another writer


def _split_model(requested: str) -> tuple[str, str, bool]:
    """`provider/model` or `provider-pool/model` → (provider slug, model name, pool?)."""
    slug, sep, name = requested.partition("/")
    pool = slug.endswith(POOL_SUFFIX)
    if pool:
        slug = slug[: -len(POOL_SUFFIX)]
    return (slug, name, pool) if sep and slug and name else ("", "", False)


def _ask(*, raw_hash: str, model: str, at: datetime, prompt_tokens: int = 0, max_tokens: int | None = 0,
         choices: int = 1, platform_only: bool = False) -> Ask:
    slug, name, pool = _split_model(model)
    month = month_start(at)
    return Ask(
        raw_hash=raw_hash, slug=slug, model=name, pool=pool, platform_only=platform_only,
        prompt_tokens=prompt_tokens, max_tokens=max_tokens, month=month,
        month_from=datetime.combine(month, datetime.min.time(), tzinfo=dt_timezone.utc), choices=choices,
    )


def _raw_hash(raw_key: str) -> str:
    """The API key's hash, as stored (401 for what cannot be an API key)."""
    if not API_KEY_PATTERN.fullmatch(raw_key):
        raise _unauthenticated()
    return api_key_hash(raw_key)


async def caller_open(*, raw_key: str, at: datetime) -> Caller:
    """Authenticate the API key (401) and count it against its rate limit (429), for the endpoints
    that route nothing."""
    raw_hash = _raw_hash(raw_key)
    await rate_limit(key=raw_hash)
    row = await plan_read(ask=_ask(raw_hash=raw_hash, model="", at=at))
    if row is None:
        raise _unauthenticated()
    return row.caller


_REFUSALS = {
    Refusal.POOL_PROVIDER_NOT_CLEARED: lambda row: GatewayError(
        403, errors.POOL_PROVIDER_NOT_CLEARED.format(provider=row.provider_slug), type="permission_error",
        code="pool_provider_not_cleared"),
    Refusal.POOL_GATE: lambda row: GatewayError(
        403, errors.POOL_GATE, type="permission_error", code="pool_membership_required"),
    Refusal.BYOK_UNAVAILABLE: lambda row: GatewayError(
        503, errors.BYOK_UNAVAILABLE.format(provider=row.provider_slug), type="api_error",
        code="byok_key_unavailable"),
    Refusal.MONTHLY_LIMIT: lambda row: _monthly_limit(),
    Refusal.INSUFFICIENT_BALANCE: lambda row: _insufficient_balance(),
}


def _monthly_limit() -> GatewayError:
    return GatewayError(402, errors.MONTHLY_LIMIT, type="insufficient_quota", code="monthly_limit_reached")


def _insufficient_balance() -> GatewayError:
    return GatewayError(402, errors.INSUFFICIENT_BALANCE, type="insufficient_quota", code="insufficient_balance")


async def request_begin(
    *, raw_key: str, model: str, request_id: str, at: datetime, prompt_tokens: int, max_tokens: int | None,
    platform_only: bool, choices: int = 1,
) -> Begun:
    """Everything before the first upstream call: who (401/429), which model (404), which routes and
    the money they need (403/402), the completion cap to forward (`plan.cap`, in `plan.cap_field`), and
    the first key. One statement (pool.hotpath.begin); a second only when the payer's account is used
    for the first time.

    `prompt_tokens` is an upper bound of the prompt; `max_tokens` the client's cap (None: none sent, 0:
    no completion); `choices` the completions asked for (`n`). The cap is the client's bounded by the
    model's output limit and, on the platform route, by what the payer's balance and the API key's
    monthly limit can pay for (402 when not one token)."""
    raw_hash = _raw_hash(raw_key)
    # Before the database: a request over its API key's limit reserves and picks nothing.
    await rate_limit(key=raw_hash)
    ask = _ask(raw_hash=raw_hash, model=model, at=at, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
               choices=choices, platform_only=platform_only)
    begun = await begin(ask=ask, request_id=request_id)
    row = begun.plan
    if row is not None and row.refusal == Refusal.NO_ACCOUNT:
        await _payer_account(row.caller)  # a first use: make the account, then begin again
        begun = await begin(ask=ask, request_id=request_id)
        row = begun.plan
    if row is None:
        raise _unauthenticated()
    if row.refusal == Refusal.UNKNOWN_MODEL:
        raise GatewayError(404, errors.MODEL_UNKNOWN.format(model=model[:200]), param="model", code="model_not_found")
    if row.refusal is not None:
        raise _REFUSALS[row.refusal](row)
    if row.hold_amount > 0 and not begun.held:
        # Refused by the balance, or on the platform by the monthly limit (billing_hold_take counts the
        # requests in flight that the plan could not see): say which binds.
        if row.route == Route.PLATFORM and row.limit_left is not None and (
                row.spendable is None or row.limit_left < row.spendable):
            raise _monthly_limit()
        raise _insufficient_balance()
    caller = row.caller
    target = Target(
        requested=model,
        provider_id=row.provider_id,
        provider_slug=row.provider_slug,
        base_url=row.base_url.rstrip("/"),
        model=row.model,
        input_price=row.input_price,
        output_price=row.output_price,
    )
    if row.route == Route.BYOK and caller.byok_fallback:
        routes = (Route.BYOK, Route.PLATFORM)
    else:
        routes = (row.route,)
    plan = Plan(routes=routes, include_exchange=row.include_exchange, worst_case=row.worst_case,
                over_limit=row.over_limit, cap=row.cap, cap_field=row.cap_field, month_from=ask.month_from)
    first = _picked_key(begun.picked.key, route=row.route)
    return Begun(caller=caller, target=target, plan=plan, first_key=first,
                 first_busy=first is None and begun.picked.candidates > 0)


# --- funds and keys -----------------------------------------------------------------------------


async def _payer_account(caller: Caller) -> int:
    """The payer's main account id; created on first use (a rare path, in a worker thread)."""
    if caller.account_id is not None:
        return caller.account_id
    account = await db_call(account_for_owner, owner=_billing_owner(caller), kind=Account.Kind.MAIN)
    return account.pk


async def route_open(
    *, caller: Caller, target: Target, plan: Plan, route: str, request_id: str, exclude: tuple[int, ...] = (),
) -> PickedKey | None:
    """Fail over to the platform route: reserve its worst case (the cap forwarded is the first route's,
    so is the worst case; 402 if the balance cannot cover it or the monthly limit would be crossed,
    requests in flight included) and take its first key."""
    if plan.over_limit:
        raise _monthly_limit()
    if plan.worst_case > 0:
        hold = Hold(account_id=await _payer_account(caller), amount=plan.worst_case,
                    hold_id=hold_id(request_id, route), api_key_id=caller.api_key_id,
                    monthly_limit=caller.monthly_limit, month_from=plan.month_from)
        if not await hold_place(hold):
            raise _insufficient_balance()
    return await key_pick(caller=caller, target=target, route=route, include_exchange=plan.include_exchange,
                          request_id=request_id, exclude=exclude)


def _picked_key(key: dict | None, *, route: str) -> PickedKey | None:
    if key is None:
        return None
    kind = route
    if route == Route.PLATFORM and not key["is_platform"] and key["exchange"]:
        kind = Route.EXCHANGE
    return PickedKey(
        key_id=key["id"],
        secret=decrypt_secret(key["secret_ciphertext"]),
        route=kind,
        owner_user_id=key["owner_user_id"],
        owner_org_id=key["owner_org_id"],
        owner_main_account_id=key["main_account_id"],
        owner_frozen_account_id=key["frozen_account_id"],
        had_errors=bool(key["consecutive_429s"] or key["failure_count"]),
    )


async def key_pick(
    *, caller: Caller, target: Target, route: str, include_exchange: bool, request_id: str,
    exclude: tuple[int, ...] = (),
) -> PickedKey | None:
    """Take the least recently used candidate key for the route (pool.hotpath.pick.key_take). Picks
    take turns in the database, so a candidate is passed over only while another writer (a state
    transition) holds it; then this tries again briefly rather than report "no key". None: no
    candidate exists."""
    for attempt in range(PICK_RETRIES):
        picked = await key_take(
            route=route, include_exchange=include_exchange, provider_id=target.provider_id,
            user_id=caller.user_id, organization_id=caller.organization_id, request_id=request_id,
            exclude=exclude,
        )
        if picked.key is not None:
            return _picked_key(picked.key, route=route)
        if not picked.candidates:
            return None
        await asyncio.sleep(0.002 * (attempt + 1))
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


def _key_owner(key: PickedKey) -> User | Organization:
    return Organization(pk=key.owner_org_id) if key.owner_org_id else User(pk=key.owner_user_id)


async def _owner_account(key: PickedKey, kind: str) -> int:
    known = key.owner_main_account_id if kind == Account.Kind.MAIN else key.owner_frozen_account_id
    if known is not None:
        return known
    account = await db_call(account_for_owner, owner=_key_owner(key), kind=kind)  # first use
    return account.pk


async def settlement_spec(s: Settlement) -> SettleSpec:
    """What settling this request moves, decided here and applied by pool.hotpath.settle.

    - platform or exchange key: the requester pays the cost of the tokens delivered (also when the
      stream was cut or the client left), capped at their balance;
    - exchange key, on success: its owner earns the resolved payout rate of what was *collected* (the
      charge after the cap at the payer's balance; 0 collected, 0 earned), into frozen. The cap is
      only known inside pool_settle, so the rate is decided here and the amount computed there;
    - BYOK, on success: the month's count rises; past the free tier, a fee of 5% of the cost;
    - pool, on success: the requester pays nothing; the donor gets 5% of the cost as a reward. It stays
      on the notional cost: nothing is collected on the pool route, so nothing is capped away; it is
      the platform's incentive (paid from its pool-rewards account) for what the donor's own key
      served (SPEC "donor credited 5% of notional cost"). A failed request, or one of 0 cost, earns
      nothing (no credit, no transaction).
    """
    target, key, usage, caller = s.target, s.key, s.usage, s.caller
    cost = token_cost(usage.prompt_tokens, target.input_price) + token_cost(usage.completion_tokens, target.output_price)
    succeeded = s.outcome == Outcome.SUCCEEDED
    route = key.route if key else None
    rid = s.request_id
    charge = cost if route in (Route.PLATFORM, Route.EXCHANGE) else 0
    byok_owner = None
    fee = 0
    if route == Route.BYOK and succeeded:
        byok_owner = (None, caller.organization_id) if caller.organization_id else (caller.user_id, None)
        fee = percent_of(cost, Decimal(settings.HEADROOM_BYOK_FEE_PERCENT))
    credit = earning = None
    rate = None
    if route == Route.POOL and succeeded:
        reward = percent_of(cost, Decimal(settings.HEADROOM_POOL_REWARD_PERCENT))
        if reward > 0:
            credit = Credit(
                amount=reward, account_id=await _owner_account(key, Account.Kind.MAIN),
                source_kind=Account.Kind.POOL_REWARDS, txn_kind=LedgerTransaction.Kind.POOL_REWARD,
                idempotency_key=f"pool-reward:{rid}", memo=f"pool request {rid}",
            )
    elif route == Route.EXCHANGE and succeeded and cost > 0:
        resolved = await db_call(payout_rate_resolve, user=key.owner_user_id, provider=target.provider_id,
                                 task=s.task)
        rate = resolved.percent
        frozen = await _owner_account(key, Account.Kind.FROZEN)
        earning = Earning(account_id=frozen, settled_cost=cost, rate_percent=rate, rule_id=resolved.rule_id,
                          scope=resolved.scope)
        if rate > 0:  # the amount: rate × collected, by pool_settle after the cap (0 collected: no credit)
            credit = Credit(
                amount=None, account_id=frozen, source_kind=Account.Kind.EXCHANGE_PAYOUTS,
                txn_kind=LedgerTransaction.Kind.EXCHANGE_EARNING, idempotency_key=f"exchange-earning:{rid}",
                memo=f"Exchange earning at {rate}% ({resolved.scope})",
            )
    # The payer's account takes the charge or fee and gets its holds back (none on the pool route).
    payer = await _payer_account(caller) if route != Route.POOL else None
    last_used = caller.last_used_at
    return SettleSpec(
        record={
            "request_id": rid, "created_at": s.created_at, "api_key_id": caller.api_key_id,
            "requester_id": caller.user_id, "organization_id": caller.organization_id,
            "route": route or Route.PLATFORM, "task": s.task, "provider_id": target.provider_id,
            "model": target.model, "provider_key_id": key.key_id if key else None, "stream": s.stream,
            "outcome": s.outcome, "upstream_status": s.upstream_status, "error_code": s.error_code[:64],
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "usage_estimated": usage.estimated, "input_price": target.input_price,
            "output_price": target.output_price, "cost": cost, "payout_rate": rate, "latency_ms": s.latency_ms, "ttfb_ms": s.ttfb_ms,
        },
        payer_account_id=payer,
        charge=charge,
        charge_key=f"charge:{rid}",
        charge_memo=f"request {rid}",
        byok_owner=byok_owner,
        month=month_start(s.created_at),
        free_requests=settings.HEADROOM_BYOK_FREE_REQUESTS,
        fee=fee,
        fee_key=f"byok-fee:{rid}",
        fee_memo=f"BYOK fee, request {rid}",
        credit=credit,
        earning=earning,
        hold_ids=tuple(hold_id(rid, r) for r in HELD_ROUTES) if payer else (),
        key_id=key.key_id if key else None,
        stats=key is not None and succeeded,
        touch_api_key=last_used is None or s.created_at - last_used >= LAST_USED_RESOLUTION,
        limited=caller.monthly_limit is not None,
    )


def _platform_accounts_ensure() -> None:
    for kind in PLATFORM_KINDS:
        platform_account(kind)


def _receipt_of_record(request_id: str) -> Receipt:
    record = RequestRecord.objects.get(request_id=request_id)
    return Receipt(request_id=request_id, route=record.route, cost=record.cost, charged=record.charged,
                   reward=record.reward, is_byok=record.route == Route.BYOK)


async def request_settle(*, s: Settlement) -> Receipt:
    """Settle one request exactly once: money, the request record, the key's counters and its
    lease on its key. A second call with the same request id moves nothing and returns the first
    receipt. Rewards and earnings are paid only for a succeeded request."""
    spec = await settlement_spec(s)
    try:
        settled = await settle(spec)
    except PlatformAccountMissing:
        await db_call(_platform_accounts_ensure)  # a fresh database: create them, settle again
        settled = await settle(spec)
    if not settled.inserted:
        return await db_call(_receipt_of_record, request_id=s.request_id)
    route = s.key.route if s.key else None
    return Receipt(request_id=s.request_id, route=route, cost=spec.record["cost"],
                   charged=settled.charged + settled.fee, reward=settled.reward, is_byok=route == Route.BYOK)
