"""The gateway's hand-written SQL: a request's hot path in two statements, shared by batches.

Why raw SQL: built with the ORM, one request took ~30 statements and ~13 ms of
Python; PERFORMANCE.md measured the way to several hundred requests a second
per core as one statement per phase on psycopg's async pool. A later census
found most of what remained to be fixed cost per statement and per
transaction, on both sides of the connection, so a request makes two
statements, and on PostgreSQL the requests that wait on the same statement
share it (pool.batch):

1. `begin` — everything before the upstream call:
   - the *plan*: one SELECT over the requests' own facts (`asks`) that reads the API key (valid, its user active),
     the model (routable) and its prices, the pool gate, whether the caller
     has a BYOK key for the provider, the payer's main account, the BYOK month
     count and the global payout rate, and decides from them what SPEC.md
     "Routing one request" decides up front: the first route (pool, BYOK,
     platform), whether exchange keys may serve, the worst case, what to
     reserve (the cost on the platform, the BYOK fee once the month is past
     the free tier, nothing on the pool) and why to refuse (unknown model, the
     pool's rules, a monthly spend limit);
   - the *hold*: a conditional UPDATE of the payer's `held` with the hold row,
     so that requests can never together reserve more than the balance;
   - the *pick*: the least recently used candidate key of the route, leased to
     the request (a row, deleted at settlement: what DISABLING drains).
   It commits without waiting for the disk (pool.db, `durable=False`).
2. `settle` — everything after the answer, exactly once per request: the
   request record (a request already recorded moves nothing again), the
   charge capped at the balance, the BYOK month count and fee past the free
   tier, the reward or exchange earning, ledger transactions and entries,
   cached balances, the release of the holds, the key's counters, the end of
   its lease.

Rules stay in one place each. Which rows qualify (a routable model, a key in
the pool, a BYOK key...) are ORM Q objects in keys.selectors and
exchange.selectors, compiled here once per process into fragments; the
rounding of money is billing.money's (`token_cost_sql`, `percent_of_sql` next
to their Python twins); the plan's decisions are the SELECT below, and
pool.services reads them from its row rather than deciding again. Amounts
after the answer (cost, fee, reward, earning) are computed in Python by
pool.services; the settlement only caps them at the balance and applies them.

Each phase is one statement per batch, on the event loop (pool.db). The plans
of a batch are its first step; then each request's hold, then each one's pick,
in turn, through the PL/pgSQL functions at the end of this module (each
request's steps see the ones before it, as if they had come one by one). The
pick, `pool_key_take`, takes its provider's turn with an advisory lock and
picks in a statement of its own, so the order is strictly least recently used
across every gateway process (`FOR NO KEY UPDATE … SKIP LOCKED` ordered by
`lru_seq`, a sequence); the turn ends at the commit, and the picks come last.
The settlement is `pool_settle`, which locks the rows other requests also move
(accounts, counters) first, in one order.

Statement texts depend only on the shape of a request (which steps it needs),
so each is built once and kept; an execution only lays out its values.
"""

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache

import orjson
from django.conf import settings
from django.db.models import F, QuerySet

from accounts.models import ApiKey
from billing.models import Account
from billing.money import percent_of_sql, token_cost_sql
from exchange.models import PayoutRateRule
from exchange.selectors import GLOBAL_RULE, exchange_open_at
from keys.models import Provider, ProviderKey, ProviderModel
from keys.selectors import BYOK, IN_POOL, PLATFORM, PLATFORM_OR_EXCHANGE, ROUTABLE_MODEL
from pool.batch import batcher
from pool.db import db_call, lane_fetchall, pg_fetchone
from pool.models import RequestRecord
from pool.selectors import Caller

Route = RequestRecord.Route
PICKED_COLUMNS = (
    "id", "secret_ciphertext", "owner_user_id", "owner_org_id", "is_platform", "exchange",
    "consecutive_429s", "failure_count",
)
PLATFORM_KINDS = (Account.Kind.REVENUE, Account.Kind.POOL_REWARDS, Account.Kind.EXCHANGE_PAYOUTS)


class Sql:
    """A statement's text with positional placeholders, built once, and the order its values go in.

    `value(name)` writes a placeholder for a value each execution supplies by name; `fragment(f)`
    writes a compiled rule fragment, whose own values are constants. Both write `%s` (as Django
    compiles the fragments); `finish(text)` turns them into PostgreSQL's own, $1, $2… (`pg`, for
    pool.db's raw cursors). `params(values)` lays one execution's values out in placeholder order.
    """

    def __init__(self):
        self._slots: list[tuple[bool, object]] = []  # (is a name, name or constant)
        self.pg = ""

    def finish(self, text: str) -> None:
        self.pg = _dollar_placeholders(text)

    def value(self, name: str) -> str:
        self._slots.append((True, name))
        return "%s"

    def fragment(self, fragment: tuple[str, tuple]) -> str:
        text, constants = fragment
        self._slots.extend((False, c) for c in constants)
        return text

    def params(self, values: dict) -> list:
        return [values[slot] if named else slot for named, slot in self._slots]


def _dollar_placeholders(sql: str) -> str:
    """`%s` placeholders as $1, $2… in order (a statement here has no literal `%`)."""
    counter = iter(range(1, sql.count("%s") + 1))
    return re.sub(r"%s", lambda _: f"${next(counter)}", sql)


# --- fragments compiled from the ORM rules, once per process ------------------------------------


def _compiled(queryset: QuerySet) -> tuple[str, tuple]:
    sql, params = queryset.query.sql_with_params()
    assert " WHERE " in sql, "a rule fragment must have a WHERE clause to extend"
    return sql, tuple(params)


@dataclass(frozen=True)
class Fragments:
    callers: tuple[str, tuple]
    targets: tuple[str, tuple]
    pool_members: tuple[str, tuple]
    byok_keys: tuple[str, tuple]
    global_rate: tuple[str, tuple]
    candidates: dict  # route -> (sql selecting keys_providerkey.id, params)


_compiled_fragments: list[Fragments] = []  # one process, one database: compiled once


def _fragments() -> Fragments:
    if not _compiled_fragments:
        _compiled_fragments.append(_compile_fragments())
    return _compiled_fragments[0]


def _compile_fragments() -> Fragments:
    keys = ProviderKey.objects.order_by()
    global_rate_sql, global_rate_params = (
        PayoutRateRule.objects.filter(GLOBAL_RULE).order_by("id").values("percent")[:1].query.sql_with_params()
    )
    return Fragments(
        callers=_compiled(
            ApiKey.objects.filter(revoked_at__isnull=True, user__is_active=True).order_by().values(
                c_id=F("id"), c_hash=F("hashed_key"), c_user=F("user_id"), c_org=F("organization_id"),
                c_mode=F("key_pool_mode"), c_fallback=F("byok_fallback"), c_limit=F("monthly_limit"),
                c_used=F("last_used_at"),
            )
        ),
        targets=_compiled(
            ProviderModel.objects.filter(ROUTABLE_MODEL).order_by().values(
                t_provider=F("provider_id"), t_slug=F("provider__slug"), t_base_url=F("provider__base_url"),
                t_name=F("name"), t_in=F("input_price"), t_out=F("output_price"),
                t_clearance=F("provider__pool_clearance"),
            )
        ),
        pool_members=_compiled(keys.filter(IN_POOL).values(g_user=F("owner_user_id"))),
        byok_keys=_compiled(
            keys.filter(BYOK).values(b_provider=F("provider_id"), b_user=F("owner_user_id"), b_org=F("owner_org_id"))
        ),
        global_rate=(global_rate_sql, tuple(global_rate_params)),
        candidates={
            Route.POOL: _compiled(keys.filter(IN_POOL).values("id")),
            Route.BYOK: _compiled(keys.filter(BYOK).values("id")),
            Route.PLATFORM: _compiled(keys.filter(PLATFORM).values("id")),
            Route.EXCHANGE: _compiled(keys.filter(PLATFORM_OR_EXCHANGE).values("id")),  # platform + exchange
        },
    )


async def _fragments_ready() -> Fragments:
    if _compiled_fragments:
        return _compiled_fragments[0]
    return await db_call(_fragments)  # compiling may ask the server its version


# --- 1. the plan: who asks for what, and what the rules decide up front -------------------------


class Refusal:
    """Why the plan refuses a request before anything is reserved (the row's `refusal`)."""

    UNKNOWN_MODEL = "unknown_model"
    POOL_PROVIDER_NOT_CLEARED = "pool_provider_not_cleared"
    POOL_GATE = "pool_gate"
    MONTHLY_LIMIT = "monthly_limit"
    NO_ACCOUNT = "no_account"  # not a refusal: the payer's account is made on first use, then again


# The plan's columns, in the order of its SELECT and of PlanRow.
PLAN_COLUMNS = (
    "c_id", "c_user", "c_org", "c_mode", "c_fallback", "c_limit", "c_used",
    "t_provider", "t_slug", "t_base_url", "t_name", "t_in", "t_out", "account_id",
    "route", "include_exchange", "worst_case", "hold_amount", "over_limit", "refusal",
)


@dataclass(frozen=True)
class PlanRow:
    caller: Caller  # with the payer's main account (None until its first use)
    provider_id: int | None  # None: no routable model by that name
    provider_slug: str | None
    base_url: str | None
    model: str | None
    input_price: int | None
    output_price: int | None
    route: str  # the first route to try
    include_exchange: bool  # exchange keys may serve the platform route
    worst_case: int  # prompt estimate × input price + max tokens × output price
    hold_amount: int  # what the first route reserves (0: nothing)
    over_limit: bool  # the platform route would cross the API key's monthly spend limit
    refusal: str | None


def _plan_ctes(f: Fragments, q: Sql, *, fee_percent: Decimal, pool: bool) -> str:
    """The plan, as common table expressions over `asks` (the requests' own facts: one row each, see
    ASK_FIELDS) ending in `plan` (one row per ask with a valid API key; none for an invalid one).
    Each step is materialised: inlined, the steps above would each evaluate again
    every sub-select whose result they name. Asks for the pool (`pool`) and for other routes have
    statements of their own: each reads only what its routes need."""
    main, cleared = Account.Kind.MAIN, Provider.PoolClearance.CLEARED
    platform_only = ApiKey.PoolMode.PLATFORM_ONLY
    context = (
        "SELECT a.n, a.request_id, a.is_pool, a.platform_only, a.prompt_tokens, a.max_tokens,"
        " a.default_rate_open, a.free_requests, a.month_from,"
        " c.c_id, c.c_user, c.c_org, c.c_mode, c.c_fallback, c.c_limit, c.c_used,"
        " t.t_provider, t.t_slug, t.t_base_url, t.t_name, t.t_in, t.t_out, t.t_clearance,"
        f" CASE WHEN c.c_org IS NULL"
        f" THEN (SELECT b.id FROM billing_account b WHERE b.user_id = c.c_user AND b.kind = '{main}')"
        f" ELSE (SELECT b.id FROM billing_account b WHERE b.organization_id = c.c_org AND b.kind = '{main}')"
        " END AS account_id,"
    )
    if pool:
        context += (
            f" EXISTS (SELECT 1 FROM ({q.fragment(f.pool_members)}) g WHERE g.g_user = c.c_user) AS pool_gate,"
            " FALSE AS byok_ready, 0 AS byok_requests,"
        )
    else:
        context += (
            # The caller's own BYOK key for the provider: the organization's when the API key is one's.
            f" FALSE AS pool_gate, EXISTS (SELECT 1 FROM ({q.fragment(f.byok_keys)}) b"
            " WHERE b.b_provider = t.t_provider"
            " AND CASE WHEN c.c_org IS NULL THEN b.b_user = c.c_user ELSE b.b_org = c.c_org END) AS byok_ready,"
            " COALESCE(CASE WHEN c.c_org IS NULL"
            " THEN (SELECT u.requests FROM billing_byokmonthlyusage u WHERE u.user_id = c.c_user AND u.month = a.month)"
            " ELSE (SELECT u.requests FROM billing_byokmonthlyusage u"
            " WHERE u.organization_id = c.c_org AND u.month = a.month) END, 0) AS byok_requests,"
        )
    context += (
        f" ({q.fragment(f.global_rate)}) AS global_rate"
        f" FROM asks a JOIN ({q.fragment(f.callers)}) c ON c.c_hash = a.raw_hash"
        f" LEFT JOIN ({q.fragment(f.targets)}) t ON t.t_slug = a.slug AND t.t_name = a.model"
    )
    # The first route: the pool when asked for; else the caller's own key if they have one; else the
    # platform. Exchange keys serve the platform route unless the request or the API key says
    # platformOnly or the global payout rate is 0% (exchange.selectors.exchange_open_at).
    routed = (
        "SELECT x.*,"
        f" CASE WHEN x.is_pool THEN '{Route.POOL}' WHEN x.byok_ready THEN '{Route.BYOK}'"
        f" ELSE '{Route.PLATFORM}' END AS route,"
        f" (NOT x.is_pool AND NOT x.platform_only AND x.c_mode <> '{platform_only}'"
        " AND CASE WHEN x.global_rate IS NULL THEN x.default_rate_open ELSE x.global_rate > 0 END)"
        " AS include_exchange,"
        " CASE WHEN x.t_provider IS NULL THEN 0"
        f" ELSE {token_cost_sql('x.prompt_tokens', 'x.t_in')} + {token_cost_sql('x.max_tokens', 'x.t_out')}"
        " END AS worst_case FROM plan_context x"
    )
    # What the first route reserves, and whether the platform route would cross the monthly limit.
    reserved = (
        "SELECT w.*,"
        f" CASE w.route WHEN '{Route.PLATFORM}' THEN w.worst_case"
        f" WHEN '{Route.BYOK}' THEN CASE WHEN w.byok_requests >= w.free_requests"
        f" THEN {percent_of_sql('w.worst_case', fee_percent)} ELSE 0 END ELSE 0 END AS hold_amount,"
        " CASE WHEN w.c_limit IS NULL OR w.t_provider IS NULL THEN FALSE"
        " ELSE COALESCE((SELECT SUM(r.charged) FROM pool_requestrecord r WHERE r.api_key_id = w.c_id"
        " AND r.created_at >= w.month_from), 0) + w.worst_case > w.c_limit END AS over_limit"
        " FROM plan_routed w"
    )
    refused = (
        "SELECT h.*, CASE"
        f" WHEN h.t_provider IS NULL THEN '{Refusal.UNKNOWN_MODEL}'"
        f" WHEN h.is_pool AND h.t_clearance <> '{cleared}' THEN '{Refusal.POOL_PROVIDER_NOT_CLEARED}'"
        f" WHEN h.is_pool AND NOT h.pool_gate THEN '{Refusal.POOL_GATE}'"
        f" WHEN h.route = '{Route.PLATFORM}' AND h.over_limit THEN '{Refusal.MONTHLY_LIMIT}'"
        f" WHEN h.hold_amount > 0 AND h.account_id IS NULL THEN '{Refusal.NO_ACCOUNT}'"
        " END AS refusal FROM plan_reserved h"
    )
    return (
        f"plan_context AS MATERIALIZED ({context}), plan_routed AS MATERIALIZED ({routed}),"
        f" plan_reserved AS MATERIALIZED ({reserved}), plan AS MATERIALIZED ({refused})"
    )


def _plan_row(row) -> PlanRow:
    values = dict(zip(PLAN_COLUMNS, row))
    caller = Caller(
        api_key_id=values["c_id"], user_id=values["c_user"], organization_id=values["c_org"],
        key_pool_mode=values["c_mode"], byok_fallback=bool(values["c_fallback"]), monthly_limit=values["c_limit"],
        last_used_at=values["c_used"], account_id=values["account_id"],
    )
    return PlanRow(
        caller=caller, provider_id=values["t_provider"], provider_slug=values["t_slug"],
        base_url=values["t_base_url"], model=values["t_name"], input_price=values["t_in"],
        output_price=values["t_out"], route=values["route"], include_exchange=bool(values["include_exchange"]), worst_case=values["worst_case"],
        hold_amount=values["hold_amount"], over_limit=bool(values["over_limit"]), refusal=values["refusal"],
    )


# A request's own facts, the plan's inputs: (name, type on PostgreSQL).
ASK_FIELDS = (
    ("n", "integer"), ("request_id", "text"), ("raw_hash", "text"), ("slug", "text"), ("model", "text"),
    ("is_pool", "boolean"), ("platform_only", "boolean"), ("prompt_tokens", "bigint"), ("max_tokens", "bigint"),
    ("month", "date"), ("month_from", "timestamptz"), ("default_rate_open", "boolean"), ("free_requests", "bigint"),
)


def _asks_of_values(q: Sql) -> str:
    """`asks` as one row of placeholders (reading a plan alone)."""
    columns = ", ".join(
        f"CAST({q.value(name)} AS BIGINT) AS {name}" if kind in ("bigint", "integer") else f"{q.value(name)} AS {name}"
        for name, kind in ASK_FIELDS
    )
    return f"asks AS (SELECT {columns})"


def _asks_of_json(q: Sql) -> str:
    """`asks` as the rows of one JSON parameter (a batch on PostgreSQL)."""
    columns = ", ".join(f"{name} {kind}" for name, kind in ASK_FIELDS)
    return f"asks AS MATERIALIZED (SELECT * FROM json_to_recordset(CAST({q.value('asks')} AS json)) AS a({columns}))"


@dataclass(frozen=True)
class Ask:
    """What one request asks for: the plan's inputs."""

    raw_hash: str
    slug: str
    model: str
    pool: bool
    platform_only: bool
    prompt_tokens: int
    max_tokens: int
    month: date  # the request's BYOK month (UTC)
    month_from: datetime  # its first instant, for the monthly spend limit


def _ask_values(ask: Ask, *, n: int = 0, request_id: str = "") -> dict:
    return {
        "n": n, "request_id": request_id, "raw_hash": ask.raw_hash, "slug": ask.slug, "model": ask.model,
        "is_pool": ask.pool, "platform_only": ask.platform_only, "prompt_tokens": ask.prompt_tokens,
        "max_tokens": ask.max_tokens, "month": ask.month, "month_from": ask.month_from,
        "default_rate_open": exchange_open_at(None), "free_requests": settings.HEADROOM_BYOK_FREE_REQUESTS,
    }


def _fee_percent() -> Decimal:
    return Decimal(settings.HEADROOM_BYOK_FEE_PERCENT)


# --- 2. candidates, pick, hold ------------------------------------------------------------------


def _candidates(f: Fragments, q: Sql, *, route: str, include_exchange: bool, of_plan: bool, exclude: int = 0) -> str:
    """The candidate keys of one route for a caller: the rule fragment plus the caller's conditions.

    The provider and the caller are the plan's columns (`of_plan`, inside the first hop) or the values
    `provider`, `user` and `org`; `exclude` adds values exclude_0… for keys already tried."""
    which = Route.EXCHANGE if route == Route.PLATFORM and include_exchange else route
    sql = q.fragment(f.candidates[which])

    def provider():
        return "p.t_provider" if of_plan else f"CAST({q.value('provider')} AS BIGINT)"

    def user():
        return "p.c_user" if of_plan else f"CAST({q.value('user')} AS BIGINT)"

    def organization():  # typed: it may be NULL
        return "p.c_org" if of_plan else f"CAST({q.value('org')} AS BIGINT)"

    k = '"keys_providerkey"'
    sql += f" AND {k}.\"provider_id\" = {provider()}"
    if route == Route.POOL:
        # Never the requester's own keys, nor their organizations'.
        sql += (
            f" AND ({k}.\"owner_user_id\" IS NULL OR {k}.\"owner_user_id\" <> {user()})"
            f" AND ({k}.\"owner_org_id\" IS NULL OR {k}.\"owner_org_id\" NOT IN"
            f" (SELECT m.organization_id FROM accounts_membership m WHERE m.user_id = {user()}))"
        )
    elif route == Route.BYOK:
        # The caller's own keys: the organization's when the API key is one's. A CASE, not an OR,
        # so the plan stays a scan of the provider's keys.
        sql += f" AND CASE WHEN {organization()} IS NULL THEN {k}.\"owner_user_id\" = {user()}"
        sql += f" ELSE {k}.\"owner_org_id\" = {organization()} END"
    else:
        # Platform keys have no owner; an exchange key never serves its own owner.
        sql += f" AND ({k}.\"owner_user_id\" IS NULL OR {k}.\"owner_user_id\" <> {user()})"
    for i in range(exclude):
        sql += f" AND {k}.\"id\" <> {q.value(f'exclude_{i}')}"
    return sql


def _owner_accounts_sql(alias: str) -> str:
    """The main and frozen account of a picked key's owner (a pool reward, an exchange earning)."""
    return ", ".join(
        f"CASE WHEN {alias}.owner_org_id IS NULL"
        f" THEN (SELECT a.id FROM billing_account a WHERE a.user_id = {alias}.owner_user_id AND a.kind = '{kind}')"
        f" ELSE (SELECT a.id FROM billing_account a WHERE a.organization_id = {alias}.owner_org_id"
        f" AND a.kind = '{kind}') END"
        for kind in (Account.Kind.MAIN, Account.Kind.FROZEN)
    )


@dataclass(frozen=True)
class Picked:
    key: dict | None  # PICKED_COLUMNS plus the owner's main and frozen account ids; None: no key taken
    candidates: int  # how many keys could serve the route (0: none can; more: all were busy)


def _picked(candidates, key_values: list) -> Picked:
    *columns, main_account, frozen_account = key_values
    key = None
    if columns[0] is not None:
        key = dict(zip(PICKED_COLUMNS, columns))
        key["is_platform"], key["exchange"] = bool(key["is_platform"]), bool(key["exchange"])
        key["main_account_id"], key["frozen_account_id"] = main_account, frozen_account
    return Picked(key=key, candidates=candidates or 0)


@dataclass(frozen=True)
class Hold:
    account_id: int
    amount: int
    hold_id: str


def hold_id(request_id: str, route: str) -> str:
    """Holds are per request and route: a request that fails over from BYOK to the platform holds for both."""
    return f"{request_id}:{route}"


# --- 3. the first hop ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FirstHop:
    plan: PlanRow | None  # None: the API key is not valid
    held: bool  # the plan's hold_amount is reserved
    picked: Picked  # the first route's key (none when the plan refused or the hold failed)


_NOT_PICKED = Picked(key=None, candidates=0)


@lru_cache(maxsize=8)
def _begin_pg_sql(fee_percent: Decimal, pool: bool) -> Sql:
    """The first hop of a batch of requests, in one statement: their plans; then their holds, in the
    order of the payers' accounts; then their picks, in the order of the providers (locks are taken in
    one order, so two batches never wait on each other in a cycle), each provider's in request order.
    The picks come last: each holds its provider's turn until the statement commits."""
    f = _fragments()
    q = Sql()
    # Written in order: the placeholders' values are laid out in the order they appear.
    text = f"WITH {_asks_of_json(q)}, {_plan_ctes(f, q, fee_percent=fee_percent, pool=pool)},"
    text += (
        " holds AS MATERIALIZED (SELECT o.n, CASE WHEN o.refusal IS NULL AND o.hold_amount > 0"
        " THEN pool_hold_take(o.account_id, o.hold_amount, o.request_id || ':' || o.route) END AS held"
        " FROM (SELECT * FROM plan ORDER BY account_id, n) o),"
        " picks AS MATERIALIZED (SELECT o.n, pool_key_take(o.t_provider, o.ids, o.request_id) AS key_id,"
        " cardinality(o.ids) AS candidates FROM (SELECT p.n, p.t_provider, p.request_id,"
    )
    if pool:
        text += f" ARRAY({_candidates(f, q, route=Route.POOL, include_exchange=False, of_plan=True)})"
    else:
        byok = _candidates(f, q, route=Route.BYOK, include_exchange=False, of_plan=True)
        with_exchange = _candidates(f, q, route=Route.PLATFORM, include_exchange=True, of_plan=True)
        platform = _candidates(f, q, route=Route.PLATFORM, include_exchange=False, of_plan=True)
        text += (f" CASE WHEN p.route = '{Route.BYOK}' THEN ARRAY({byok})"
                 f" WHEN p.include_exchange THEN ARRAY({with_exchange}) ELSE ARRAY({platform}) END")
    text += (
        " AS ids FROM plan p JOIN holds h ON h.n = p.n WHERE p.refusal IS NULL AND (p.hold_amount = 0 OR h.held)"
        " ORDER BY p.t_provider, p.n) o)"
    )
    columns = ", ".join(f"k.{c}" for c in PICKED_COLUMNS)
    text += (
        f" SELECT p.n, {', '.join('p.' + c for c in PLAN_COLUMNS)}, COALESCE(h.held, FALSE),"
        f" COALESCE(t.candidates, 0), {columns}, {_owner_accounts_sql('k')}"
        " FROM plan p JOIN holds h ON h.n = p.n LEFT JOIN picks t ON t.n = p.n"
        " LEFT JOIN keys_providerkey k ON k.id = t.key_id"
    )
    q.finish(text)
    return q


@lru_cache(maxsize=8)
def _plan_sql(fee_percent: Decimal, pool: bool) -> Sql:
    q = Sql()
    asks = _asks_of_values(q)
    plan = _plan_ctes(_fragments(), q, fee_percent=fee_percent, pool=pool)
    q.finish(f"WITH {asks}, {plan} SELECT {', '.join(PLAN_COLUMNS)} FROM plan")
    return q


def _json_value(value):
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _pg_array(values) -> str:
    """A PostgreSQL array literal of numbers, dates or plain words (cast in the statement), in order:
    cheaper to pass than a list psycopg would adapt element by element."""
    items = sorted(str(v) for v in values)
    assert all(item.replace("_", "").replace("-", "").isalnum() for item in items)
    return "{" + ",".join(items) + "}"


def _json(rows: list[dict]) -> str:
    """Rows as JSON for json_to_recordset (dates and times in ISO 8601, decimals as strings)."""
    return orjson.dumps(rows, default=_json_value).decode()


async def _begin_pg_batch(items: list[tuple[Ask, str]]) -> list[FirstHop]:
    """One statement for the batch's pool requests and one for the others (either may be empty)."""
    width = len(PLAN_COLUMNS)
    found = {}
    for pool in (True, False):
        asks = [_ask_values(ask, n=n, request_id=request_id) for n, (ask, request_id) in enumerate(items)
                if ask.pool is pool]
        if not asks:
            continue
        q = _begin_pg_sql(_fee_percent(), pool)
        for row in await lane_fetchall("begin", q.pg, q.params({"asks": _json(asks)}), durable=False):
            plan = _plan_row(row[1:width + 1])
            held, candidates = row[width + 1], row[width + 2]
            found[row[0]] = FirstHop(plan=plan, held=bool(held), picked=_picked(candidates, list(row[width + 3:])))
    return [found.get(n, FirstHop(plan=None, held=False, picked=_NOT_PICKED)) for n in range(len(items))]


async def begin(*, ask: Ask, request_id: str, now: datetime) -> FirstHop:
    """The first hop: plan, hold and pick, with the requests waiting alongside in one statement
    (pool.batch).

    The hold is placed only when the plan refuses nothing; the key is picked only when the hold, if
    any, is placed. Holds are named `request_id:route`."""
    await _fragments_ready()
    return await batcher("begin", _begin_pg_batch).submit((ask, request_id))


async def plan_read(*, ask: Ask) -> PlanRow | None:
    """The plan alone (no hold, no pick): who is calling, for the endpoints that route nothing."""
    await _fragments_ready()
    q = _plan_sql(_fee_percent(), ask.pool)
    params = q.params(_ask_values(ask))
    row = await pg_fetchone(q.pg, params, durable=False)
    return None if row is None else _plan_row(row)


# --- the rare paths of the first hop: another key, another route --------------------------------


@lru_cache(maxsize=64)
def _take_pg_sql(route: str, include_exchange: bool, exclude: int) -> Sql:
    f = _fragments()
    q = Sql()
    cands = _candidates(f, q, route=route, include_exchange=include_exchange, of_plan=False, exclude=exclude)
    columns = ", ".join(f"k.{c}" for c in PICKED_COLUMNS)
    q.finish(
        f"WITH cands AS MATERIALIZED (SELECT ARRAY({cands}) AS ids),"
        f" take AS MATERIALIZED (SELECT pool_key_take(CAST({q.value('provider')} AS BIGINT), c.ids,"
        f" {q.value('request_id')}) AS key_id, cardinality(c.ids) AS n FROM cands c)"
        f" SELECT take.n, {columns}, {_owner_accounts_sql('k')}"
        " FROM take LEFT JOIN keys_providerkey k ON k.id = take.key_id"
    )
    return q


async def key_take(
    *, route: str, include_exchange: bool, provider_id: int, user_id: int, organization_id: int | None,
    request_id: str, exclude: tuple[int, ...] = (), now: datetime,
) -> Picked:
    """Take the least recently used free candidate of the route for this caller, leased to
    `request_id` until it settles: another key after a failure, or the fail-over route's first."""
    await _fragments_ready()
    values = {"provider": provider_id, "user": user_id, "org": organization_id, "request_id": request_id,
              **{f"exclude_{i}": key_id for i, key_id in enumerate(exclude)}}
    q = _take_pg_sql(route, include_exchange, len(exclude))
    row = await pg_fetchone(q.pg, q.params(values), durable=False)
    return _picked(row[0], list(row[1:]))


HOLD_PG = "SELECT pool_hold_take($1, $2, $3)"


async def hold_place(hold: Hold, *, now: datetime) -> bool:
    """Reserve `hold.amount` of the payer's spendable balance (balance − held); False when it cannot
    cover it. One conditional UPDATE checks and reserves, so concurrent requests can never together
    reserve more than the balance."""
    return bool((await pg_fetchone(HOLD_PG, [hold.account_id, hold.amount, hold.hold_id], durable=False))[0])


# --- 4. settle ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credit:
    """Money to a key's owner: a pool reward (to their main account) or an exchange earning (frozen)."""

    amount: int
    account_id: int
    source_kind: str  # the platform account it comes from
    txn_kind: str
    idempotency_key: str
    memo: str


@dataclass(frozen=True)
class Earning:
    """The exchange earning's own row: the rate as it was, whatever the amount (0% included)."""

    account_id: int
    settled_cost: int
    rate_percent: Decimal
    rule_id: int | None
    scope: str
    amount: int


@dataclass(frozen=True)
class SettleSpec:
    record: dict  # pool_requestrecord columns, but charged and fee (decided here)
    payer_account_id: int | None  # None: nothing to charge or release
    charge: int  # the cost to charge, capped at the payer's balance
    charge_key: str
    charge_memo: str
    byok_owner: tuple[int | None, int | None] | None  # (user_id, organization_id) whose month counts; None: no count
    month: date
    free_requests: int
    fee: int  # the BYOK fee if this request is past the free tier, capped at what the charge left
    fee_key: str
    fee_memo: str
    credit: Credit | None
    earning: Earning | None
    hold_ids: tuple[str, ...]
    key_id: int | None
    stats: bool  # count the request in the key's aggregates (succeeded only)
    touch_api_key: bool  # last_used_at is older than its resolution


@dataclass(frozen=True)
class Settled:
    inserted: bool  # False: the request was settled before; nothing moved now
    charged: int
    fee: int


SETTLE_ATTEMPTS = 3


class PlatformAccountMissing(Exception):
    """A platform account the settlement posts to does not exist yet; nothing was written."""


def _settle_json(s: SettleSpec) -> dict:
    """One settlement as pool_settle reads it (SETTLEMENT_FIELDS)."""
    payer = s.payer_account_id or None
    byok_user, byok_org = s.byok_owner or (None, None)
    row = {
        **s.record, "error_code": s.record["error_code"][:64], "payer": payer, "charge": s.charge if payer else 0,
        "charge_key": s.charge_key, "charge_memo": s.charge_memo[:200], "byok_user": byok_user,
        "byok_org": byok_org, "month": s.month, "free": s.free_requests, "fee": s.fee if payer else 0,
        "fee_key": s.fee_key, "fee_memo": s.fee_memo[:200], "hold_ids": list(s.hold_ids) if payer else [],
        "key_id": s.key_id, "stats": s.key_id is not None and s.stats, "touch": s.touch_api_key,
        "earning": s.earning is not None,
    }
    if s.credit:
        c = s.credit
        row.update(credit=c.amount, credit_account=c.account_id, credit_source=c.source_kind,
                   credit_kind=c.txn_kind, credit_key=c.idempotency_key, credit_memo=c.memo[:200])
    if s.earning:
        e = s.earning
        row.update(earning_account=e.account_id, settled_cost=e.settled_cost, rate=e.rate_percent,
                   rate_rule=e.rule_id, rate_scope=e.scope, earned=e.amount)
    return row


SETTLE_PG = (
    "SELECT * FROM pool_settle(CAST($1 AS json), CAST($2 AS bigint[]), CAST($3 AS text[]), CAST($4 AS bigint[]),"
    " CAST($5 AS bigint[]), CAST($6 AS bigint[]), CAST($7 AS date[]), CAST($8 AS boolean))"
)


async def _settle_pg_batch(specs: list[SettleSpec]) -> list[Settled]:
    from psycopg.errors import CheckViolation, DeadlockDetected, NotNullViolation

    batch = [_settle_json(s) for s in specs]
    # The accounts the batch moves, for pool_settle to lock before it reads them when asked to.
    accounts = {a for r in batch for a in (r["payer"], r.get("credit_account")) if a}
    platform = ({Account.Kind.REVENUE for r in batch if r["charge"] or r["fee"]}
                | {r["credit_source"] for r in batch if r.get("credit_source")})
    # The counters it moves, locked first in one order, but only when it moves more than one of a kind:
    # a single one is locked where it is written, which is before any account all the same.
    keys = {r["key_id"] for r in batch if r["stats"]}
    counted = {(r["byok_user"], r["byok_org"], r["month"]) for r in batch if r["byok_user"] or r["byok_org"]}
    several = len(counted) > 1
    params = [
        _json(batch), _pg_array(accounts), _pg_array(platform), _pg_array(keys if len(keys) > 1 else ()),
        _pg_array({user for user, _, _ in counted if user} if several else ()),
        _pg_array({org for _, org, _ in counted if org} if several else ()),
        _pg_array({month.isoformat() for _, _, month in counted}), False,
    ]
    for attempt in range(SETTLE_ATTEMPTS):
        try:
            rows = await lane_fetchall("settle", SETTLE_PG, params)
            break
        except CheckViolation:
            # A concurrent debit left a payer less than what the batch charged from the balance it read:
            # nothing was written; settle again with the accounts locked before they are read.
            if params[-1]:
                raise
            params[-1] = True
        except DeadlockDetected:
            # Against a writer that locks the same rows in another order; nothing was written.
            if attempt == SETTLE_ATTEMPTS - 1:
                raise
        except NotNullViolation as error:
            if error.diag.table_name == "billing_ledgerentry":
                raise PlatformAccountMissing() from None
            raise
    settled = {request_id: Settled(inserted=inserted, charged=charged, fee=fee)
               for request_id, inserted, charged, fee in rows}
    return [settled[s.record["request_id"]] for s in specs]


async def settle(spec: SettleSpec, *, now: datetime) -> Settled:
    """Apply a settlement exactly once (keyed by the request id): with the settlements waiting
    alongside in one statement and one commit (pool.batch)."""
    return await batcher("settle", _settle_pg_batch).submit(spec)


# --- 5. the PostgreSQL functions the statements above call ----------------------------------------
#
# Why functions: PostgreSQL's cost of a request was mostly fixed cost per statement and per
# transaction (a round trip, executor start-up, commit: ~120 µs for a one-row write on its own, ~22 µs
# inside a PL/pgSQL loop), so the requests that arrive while a statement is in flight go together in
# the next one (pool.batch), and these functions do each request's steps in turn: in order, each
# seeing the ones before it, exactly as if they had come one by one. Migrations install them
# (install_functions); a change here needs a migration that installs them again.
#
# - pool_hold_take: reserve an amount of the payer's spendable balance (balance − held) with the hold
#   row; false when it cannot cover it. One conditional UPDATE checks and reserves, so requests can
#   never together reserve more than the balance.
# - pool_key_take: the least-recently-used pick. It must be strictly least recently used across every
#   gateway process, and a single statement cannot be: its snapshot is taken when it starts, so a pick
#   that waited for its turn would still see the order from before the pick it waited for, and
#   FOR UPDATE SKIP LOCKED alone lets concurrent picks pass over the true least-recently-used key while
#   another pick holds it for a moment (the rotation drifts). Here a pick first takes its provider's
#   turn (a transaction-scoped advisory lock: no table row is held), then runs the UPDATE as a
#   statement of its own (a volatile function's statements each get a fresh snapshot), so it sees every
#   pick committed before its turn. The turn ends when the caller's transaction commits; the caller
#   makes the picks its last step. Which keys may serve stays with the caller (the candidate list is
#   compiled from keys.selectors); this only orders, locks, stamps and leases. SKIP LOCKED still passes
#   over a key that another writer (a state transition) holds.
# - pool_settle: settle a batch of requests, exactly once each (a request already recorded moves
#   nothing again): the request record, the charge then the BYOK fee each capped at what the balance
#   still has, the BYOK month count, the reward or exchange earning, ledger transactions and entries
#   (written for the whole batch in one statement after its requests' steps),
#   cached balances, the holds' release (deleted), the key's counters, the API key's last use, the end
#   of the lease. What each request moves was decided by pool.services; this applies it. Counters other
#   settlements move too are locked first, in one order; accounts are moved once each, last, in id
#   order (every writer of accounts locks them in that order), so that their rows are held only from
#   there to the commit.

# The advisory lock's first key: "picks of provider N" (the second key is the provider's id).
PICK_LOCK_CLASS = 7_201_701

HOLD_TAKE = """
CREATE OR REPLACE FUNCTION pool_hold_take(p_account bigint, p_amount bigint, p_hold_id text)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- One statement: the reservation and its row, or neither.
    WITH reserved AS (
        UPDATE billing_account SET held = held + p_amount WHERE id = p_account AND balance - held >= p_amount
        RETURNING id
    )
    INSERT INTO billing_balancehold (account_id, request_id, amount, created_at)
    SELECT reserved.id, p_hold_id, p_amount, now() FROM reserved;
    RETURN FOUND;
END;
$$;
"""

KEY_TAKE = f"""
CREATE OR REPLACE FUNCTION pool_key_take(p_provider bigint, p_candidates bigint[], p_request text)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    taken bigint;
BEGIN
    IF p_candidates IS NULL OR cardinality(p_candidates) = 0 THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock({PICK_LOCK_CLASS}, mod(p_provider, 2147483647)::integer);
    -- A statement of its own after the turn (a fresh snapshot): the stamp and the lease together.
    WITH stamped AS (
        UPDATE keys_providerkey SET lru_seq = nextval('pool_key_lru_seq'), last_used_at = now()
        WHERE id = (
            SELECT k.id FROM keys_providerkey k WHERE k.id = ANY (p_candidates)
            ORDER BY k.lru_seq, k.id LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED
        )
        RETURNING id
    )
    INSERT INTO keys_providerkeylease (key_id, request_id, created_at)
    SELECT stamped.id, p_request, now() FROM stamped
    RETURNING key_id INTO taken;
    RETURN taken;
END;
$$;
"""

# One settlement's fields, as pool.sql.settle sends them (JSON, one object per request).
SETTLEMENT_FIELDS = """
    request_id text, created_at timestamptz, api_key_id bigint, requester_id bigint, organization_id bigint,
    route text, task text, provider_id bigint, model text, provider_key_id bigint, stream boolean, outcome text,
    upstream_status integer, error_code text, prompt_tokens bigint, completion_tokens bigint,
    usage_estimated boolean, input_price bigint, output_price bigint, cost bigint, reward bigint,
    payout_rate numeric, latency_ms bigint, ttfb_ms bigint,
    payer bigint, charge bigint, charge_key text, charge_memo text,
    byok_user bigint, byok_org bigint, month date, free bigint, fee bigint, fee_key text, fee_memo text,
    hold_ids text[], key_id bigint, stats boolean, touch boolean,
    credit bigint, credit_account bigint, credit_source text, credit_kind text, credit_key text, credit_memo text,
    earning boolean, earning_account bigint, settled_cost bigint, rate numeric, rate_rule bigint,
    rate_scope text, earned bigint
"""

SETTLE = """
CREATE OR REPLACE FUNCTION pool_settle(
    p_batch json, p_accounts bigint[], p_platform text[], p_keys bigint[], p_byok_users bigint[],
    p_byok_orgs bigint[], p_months date[], p_lock_first boolean
)
RETURNS TABLE(out_request_id text, out_inserted boolean, out_charged bigint, out_fee bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    s record;
    r record;
    v_kinds text[] := ARRAY['revenue', 'pool_rewards', 'exchange_payouts'];
    v_platform bigint[];  -- those accounts' ids, in that order
    -- Every account the batch moves, with what it moves; the payers' balances as the batch leaves them.
    v_ids bigint[] := ARRAY[]::bigint[];
    v_delta bigint[] := ARRAY[]::bigint[];
    v_held bigint[] := ARRAY[]::bigint[];
    v_left bigint[] := ARRAY[]::bigint[];  -- NULL until the account is read (it is read as a payer)
    v_i integer;
    v_j integer;
    v_balance bigint;
    v_count bigint;
    v_fee_due bigint;
    v_charged bigint;
    v_fee bigint;
    v_released bigint;
    v_touched bigint[] := ARRAY[]::bigint[];
    -- The batch's ledger transactions (two entries each: from, to) and exchange earnings, written
    -- together after the loop: one statement for the batch rather than one per request. NULL until
    -- the first append (array_append makes the array; unnest reads NULL as no rows).
    l_key text[];
    l_kind text[];
    l_memo text[];
    l_from bigint[];
    l_to bigint[];
    l_amount bigint[];
    e_key bigint[];
    e_account bigint[];
    e_request text[];
    e_cost bigint[];
    e_rate numeric[];
    e_rule bigint[];
    e_scope text[];
    e_amount bigint[];
    e_txn_key text[];  -- the credit's ledger transaction (NULL: nothing credited)
BEGIN
    -- Counters other settlements move too, locked first in one order: key counters by key, then BYOK
    -- month counters of users, then of organizations, by id (the caller lists them only when the batch
    -- moves more than one of a kind: a single one is locked where it is written, before any account).
    IF cardinality(p_keys) > 0 THEN
        PERFORM 1 FROM keys_providerkeystats k WHERE k.key_id = ANY (p_keys) ORDER BY k.key_id FOR UPDATE;
    END IF;
    IF cardinality(p_byok_users) > 0 THEN
        PERFORM 1 FROM billing_byokmonthlyusage u
        WHERE u.user_id = ANY (p_byok_users) AND u.month = ANY (p_months) ORDER BY u.id FOR UPDATE;
    END IF;
    IF cardinality(p_byok_orgs) > 0 THEN
        PERFORM 1 FROM billing_byokmonthlyusage u
        WHERE u.organization_id = ANY (p_byok_orgs) AND u.month = ANY (p_months) ORDER BY u.id FOR UPDATE;
    END IF;
    -- In v_kinds' order; NULL for one not made yet (a ledger entry then refuses it: PlatformAccountMissing).
    SELECT ARRAY[max(a.id) FILTER (WHERE a.kind = v_kinds[1]), max(a.id) FILTER (WHERE a.kind = v_kinds[2]),
                 max(a.id) FILTER (WHERE a.kind = v_kinds[3])]
    INTO v_platform FROM billing_account a
    WHERE a.kind = ANY (v_kinds) AND a.user_id IS NULL AND a.organization_id IS NULL;
    -- Accounts are moved once each, at the end, so that their rows (a payer's is also wanted by the
    -- holds of its next requests) are locked only from there to the commit. A payer's balance is read
    -- when first needed, unlocked; should a concurrent debit leave less than the charges taken from
    -- what was read, the not-below-zero CHECK refuses the batch and the caller settles it again with
    -- the accounts locked first (p_lock_first), so that what is read is what is charged.
    IF p_lock_first THEN
        PERFORM 1 FROM billing_account a
        WHERE a.id = ANY (p_accounts || ARRAY(SELECT b.id FROM billing_account b WHERE b.id = ANY (v_platform)
                                              AND b.kind = ANY (p_platform)))
        ORDER BY a.id FOR UPDATE;
    END IF;

    FOR s IN SELECT * FROM json_to_recordset(p_batch) AS x(SETTLEMENT_FIELDS) LOOP
        out_request_id := s.request_id;
        IF EXISTS (SELECT 1 FROM pool_requestrecord q WHERE q.request_id = s.request_id) THEN
            -- Settled before: nothing moves again.
            out_inserted := false; out_charged := 0; out_fee := 0;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_balance := 0;
        v_i := NULL;
        IF s.payer IS NOT NULL THEN
            v_i := array_position(v_ids, s.payer);
            IF v_i IS NULL THEN
                v_ids := v_ids || s.payer; v_delta := v_delta || 0::bigint; v_held := v_held || 0::bigint;
                v_left := v_left || NULL::bigint;
                v_i := cardinality(v_ids);
            END IF;
            IF v_left[v_i] IS NULL THEN
                SELECT a.balance + v_delta[v_i] INTO v_balance FROM billing_account a WHERE a.id = s.payer;
                v_left[v_i] := v_balance;
            END IF;
            v_balance := v_left[v_i];
        END IF;
        v_fee_due := 0;
        IF s.byok_org IS NOT NULL THEN
            INSERT INTO billing_byokmonthlyusage AS u (user_id, organization_id, month, requests)
            VALUES (NULL, s.byok_org, s.month, 1)
            ON CONFLICT (organization_id, month) WHERE organization_id IS NOT NULL
            DO UPDATE SET requests = u.requests + 1 RETURNING u.requests INTO v_count;
        ELSIF s.byok_user IS NOT NULL THEN
            INSERT INTO billing_byokmonthlyusage AS u (user_id, organization_id, month, requests)
            VALUES (s.byok_user, NULL, s.month, 1)
            ON CONFLICT (user_id, month) WHERE user_id IS NOT NULL
            DO UPDATE SET requests = u.requests + 1 RETURNING u.requests INTO v_count;
        END IF;
        IF (s.byok_org IS NOT NULL OR s.byok_user IS NOT NULL) AND v_count > s.free THEN
            v_fee_due := s.fee;
        END IF;
        -- The charge, then the fee, each capped at what the balance still has.
        v_charged := LEAST(s.charge, GREATEST(v_balance, 0));
        v_fee := LEAST(v_fee_due, GREATEST(v_balance - v_charged, 0));
        INSERT INTO pool_requestrecord (request_id, created_at, api_key_id, requester_id, organization_id, route,
            task, provider_id, model, provider_key_id, stream, outcome, upstream_status, error_code, prompt_tokens,
            completion_tokens, usage_estimated, input_price, output_price, cost, reward, payout_rate, latency_ms,
            ttfb_ms, charged, fee, settled_at)
        VALUES (s.request_id, s.created_at, s.api_key_id, s.requester_id, s.organization_id, s.route, s.task,
            s.provider_id, s.model, s.provider_key_id, s.stream, s.outcome, s.upstream_status, s.error_code,
            s.prompt_tokens, s.completion_tokens, s.usage_estimated, s.input_price, s.output_price, s.cost,
            s.reward, s.payout_rate, s.latency_ms, s.ttfb_ms, v_charged + v_fee, v_fee, now());
        -- The request's lease on its key ends with it, and its holds (there are only holds with a payer).
        IF v_i IS NOT NULL THEN
            WITH released AS (
                DELETE FROM billing_balancehold h WHERE h.request_id = ANY (s.hold_ids) RETURNING h.amount
            ), ended AS (
                DELETE FROM keys_providerkeylease l WHERE l.request_id = s.request_id
            ) SELECT COALESCE(SUM(amount), 0) INTO v_released FROM released;
            v_left[v_i] := v_left[v_i] - v_charged - v_fee;
            v_delta[v_i] := v_delta[v_i] - v_charged - v_fee;
            v_held[v_i] := v_held[v_i] - v_released;
        ELSE
            DELETE FROM keys_providerkeylease l WHERE l.request_id = s.request_id;
        END IF;
        IF v_charged > 0 THEN
            l_key := array_append(l_key, s.charge_key); l_kind := array_append(l_kind, 'usage'::text);
            l_memo := array_append(l_memo, s.charge_memo); l_from := array_append(l_from, s.payer);
            l_to := array_append(l_to, v_platform[1]); l_amount := array_append(l_amount, v_charged);
        END IF;
        IF v_fee > 0 THEN
            l_key := array_append(l_key, s.fee_key); l_kind := array_append(l_kind, 'byok_fee'::text);
            l_memo := array_append(l_memo, s.fee_memo); l_from := array_append(l_from, s.payer);
            l_to := array_append(l_to, v_platform[1]); l_amount := array_append(l_amount, v_fee);
        END IF;
        IF s.credit IS NOT NULL THEN
            v_j := array_position(v_kinds, s.credit_source);
            l_key := array_append(l_key, s.credit_key); l_kind := array_append(l_kind, s.credit_kind);
            l_memo := array_append(l_memo, s.credit_memo); l_from := array_append(l_from, v_platform[v_j]);
            l_to := array_append(l_to, s.credit_account); l_amount := array_append(l_amount, s.credit);
            v_i := array_position(v_ids, s.credit_account);
            IF v_i IS NULL THEN
                v_ids := v_ids || s.credit_account; v_delta := v_delta || 0::bigint;
                v_held := v_held || 0::bigint; v_left := v_left || NULL::bigint;
                v_i := cardinality(v_ids);
            END IF;
            v_delta[v_i] := v_delta[v_i] + s.credit;
            v_left[v_i] := v_left[v_i] + s.credit;  -- stays NULL until read as a payer
            v_i := array_position(v_ids, v_platform[v_j]);
            IF v_i IS NULL THEN
                v_ids := v_ids || v_platform[v_j]; v_delta := v_delta || 0::bigint;
                v_held := v_held || 0::bigint; v_left := v_left || NULL::bigint;
                v_i := cardinality(v_ids);
            END IF;
            v_delta[v_i] := v_delta[v_i] - s.credit;
        END IF;
        IF v_charged + v_fee > 0 THEN
            v_i := array_position(v_ids, v_platform[1]);
            IF v_i IS NULL THEN
                v_ids := v_ids || v_platform[1]; v_delta := v_delta || 0::bigint;
                v_held := v_held || 0::bigint; v_left := v_left || NULL::bigint;
                v_i := cardinality(v_ids);
            END IF;
            v_delta[v_i] := v_delta[v_i] + v_charged + v_fee;
        END IF;
        IF s.earning THEN
            e_key := array_append(e_key, s.key_id); e_account := array_append(e_account, s.earning_account);
            e_request := array_append(e_request, s.request_id); e_cost := array_append(e_cost, s.settled_cost);
            e_rate := array_append(e_rate, s.rate); e_rule := array_append(e_rule, s.rate_rule);
            e_scope := array_append(e_scope, s.rate_scope); e_amount := array_append(e_amount, s.earned);
            e_txn_key := array_append(e_txn_key, CASE WHEN s.credit IS NOT NULL THEN s.credit_key END);
        END IF;
        IF s.stats THEN
            INSERT INTO keys_providerkeystats AS k (key_id, requests_served, prompt_tokens, completion_tokens,
                credits_earned, updated_at)
            VALUES (s.key_id, 1, s.prompt_tokens, s.completion_tokens, COALESCE(s.credit, 0), now())
            ON CONFLICT (key_id) DO UPDATE SET requests_served = k.requests_served + 1,
                prompt_tokens = k.prompt_tokens + EXCLUDED.prompt_tokens,
                completion_tokens = k.completion_tokens + EXCLUDED.completion_tokens,
                credits_earned = k.credits_earned + EXCLUDED.credits_earned, updated_at = EXCLUDED.updated_at;
        END IF;
        IF s.touch THEN
            v_touched := v_touched || s.api_key_id;
        END IF;
        out_inserted := true; out_charged := v_charged; out_fee := v_fee;
        RETURN NEXT;
    END LOOP;

    -- The batch's ledger: each transaction with its two entries, and the exchange earnings with the
    -- transaction that credited them.
    IF l_key IS NOT NULL OR e_key IS NOT NULL THEN
        WITH txn AS (
            INSERT INTO billing_ledgertransaction (idempotency_key, kind, memo, created_at)
            SELECT t.key, t.kind, t.memo, now() FROM unnest(l_key, l_kind, l_memo) AS t(key, kind, memo)
            RETURNING id, idempotency_key
        ), legs AS (
            INSERT INTO billing_ledgerentry (transaction_id, account_id, amount, created_at)
            SELECT txn.id, leg.account, leg.amount, now()
            FROM unnest(l_key, l_from, l_to, l_amount) AS p(key, src, dst, amount)
            JOIN txn ON txn.idempotency_key = p.key,
            LATERAL (VALUES (p.src, -p.amount), (p.dst, p.amount)) AS leg(account, amount)
        )
        INSERT INTO exchange_exchangeearning (provider_key_id, account_id, request_id, settled_cost,
            rate_percent, rate_rule_id, rate_scope, amount, ledger_transaction_id, created_at)
        SELECT e.key_id, e.account, e.request_id, e.cost, e.rate, e.rule, e.scope, e.amount, txn.id, now()
        FROM unnest(e_key, e_account, e_request, e_cost, e_rate, e_rule, e_scope, e_amount, e_txn_key)
            AS e(key_id, account, request_id, cost, rate, rule, scope, amount, txn_key)
        LEFT JOIN txn ON txn.idempotency_key = e.txn_key;
    END IF;

    -- The accounts move last, once each, in id order (every writer of accounts locks them in that order).
    FOR r IN SELECT u.id, u.delta, u.held FROM unnest(v_ids, v_delta, v_held) AS u(id, delta, held) ORDER BY u.id
    LOOP
        IF r.delta <> 0 OR r.held <> 0 THEN
            UPDATE billing_account SET balance = balance + r.delta, held = held + r.held WHERE id = r.id;
        END IF;
    END LOOP;
    IF cardinality(v_touched) > 0 THEN
        PERFORM 1 FROM accounts_apikey k WHERE k.id = ANY (v_touched) ORDER BY k.id FOR UPDATE;
        UPDATE accounts_apikey SET last_used_at = now()
        WHERE id = ANY (v_touched) AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds');
    END IF;
END;
$$;
""".replace("SETTLEMENT_FIELDS", SETTLEMENT_FIELDS)

DROP_SQL = """
DROP FUNCTION IF EXISTS pool_settle(json, bigint[], text[], bigint[], bigint[], bigint[], date[], boolean);
DROP FUNCTION IF EXISTS pool_ledger_post(text, text, text, bigint, bigint, bigint);
DROP FUNCTION IF EXISTS pool_key_take(bigint, bigint[], text);
DROP FUNCTION IF EXISTS pool_hold_take(bigint, bigint, text);
"""


FUNCTIONS = (HOLD_TAKE, KEY_TAKE, SETTLE)


def install_functions(schema_editor) -> None:
    """Create (or replace) the functions above: called by migrations, on PostgreSQL only."""
    if schema_editor.connection.vendor == "postgresql":
        for sql in FUNCTIONS:
            schema_editor.execute(sql)


def drop_functions(schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_SQL)
