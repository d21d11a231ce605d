"""The plan: who asks for what, and what SPEC.md "Routing one request" decides up front.

One SELECT over the requests' own facts (`asks`) reads the API key (valid, its user active), the
model (routable) and its prices, the pool gate, whether the caller has a BYOK key for the provider,
the payer's main account and its spendable balance, the API key's monthly spend (settled and in
flight), the BYOK month count and the global payout rate, and decides from them: the first route
(pool, BYOK, platform), whether exchange keys may serve, the completion cap to forward (the client's
cap bounded by the model's output limit and, on the platform, by what the payer can afford: README
"Money integrity"), the worst case, what to reserve (the cost on the platform, the BYOK fee once the
month is past the free tier, nothing on the pool) and why to refuse (unknown model, the pool's rules,
a monthly spend limit, a balance that cannot pay for one completion token). pool.services
reads these decisions from its row rather than deciding again. The rounding of money is
core.money's (`token_cost_sql`, `percent_of_sql`, next to their Python twins).
"""

from decimal import Decimal
from functools import lru_cache

from django.conf import settings

from accounts.models import ApiKey
from billing.models import Account
from core.money import percent_of_sql, token_cost_sql
from exchange.selectors import exchange_open_at, exchange_open_sql
from keys.models import Provider
from pool.hotpath.db import pg_fetchone
from pool.hotpath.dtos import Ask, PlanRow, Refusal
from pool.hotpath.fragments import Fragments, fragments, fragments_ready
from pool.hotpath.sqltext import Sql
from pool.models import RequestRecord
from pool.selectors import Caller

Route = RequestRecord.Route


# The plan's columns, in the order of its SELECT and of PlanRow.
PLAN_COLUMNS = (
    "c_id", "c_user", "c_org", "c_mode", "c_fallback", "c_limit", "c_used",
    "t_provider", "t_slug", "t_base_url", "t_name", "t_in", "t_out", "account_id",
    "route", "include_exchange", "worst_case", "hold_amount", "over_limit", "refusal", "cap", "t_cap_field",
    "spendable", "limit_left",
)


def plan_ctes(f: Fragments, q: Sql, *, fee_percent: Decimal, pool: bool) -> str:
    """The plan, as common table expressions over `asks` (the requests' own facts: one row each, see
    ASK_FIELDS) ending in `plan` (one row per ask with a valid API key; none for an invalid one).
    Each step is materialised: inlined, the steps above would each evaluate again
    every sub-select whose result they name. Asks for the pool (`pool`) and for other routes have
    statements of their own: each reads only what its routes need."""
    main, cleared = Account.Kind.MAIN, Provider.PoolClearance.CLEARED
    platform_only = ApiKey.PoolMode.PLATFORM_ONLY
    context = (
        "SELECT a.n, a.request_id, a.is_pool, a.platform_only, a.prompt_tokens, a.max_tokens, a.choices,"
        " a.default_max_tokens, a.default_rate_open, a.free_requests, a.month, a.month_from,"
        " c.c_id, c.c_user, c.c_org, c.c_mode, c.c_fallback, c.c_limit, c.c_used,"
        " t.t_provider, t.t_slug, t.t_base_url, t.t_name, t.t_in, t.t_out, t.t_clearance, t.t_max_out,"
        " t.t_cap_field,"
        f" CASE WHEN c.c_org IS NULL"
        f" THEN (SELECT b.id FROM billing_account b WHERE b.user_id = c.c_user AND b.kind = '{main}')"
        f" ELSE (SELECT b.id FROM billing_account b WHERE b.organization_id = c.c_org AND b.kind = '{main}')"
        " END AS account_id,"
    )
    if pool:
        context += (
            f" EXISTS (SELECT 1 FROM ({q.fragment(f.pool_members)}) g WHERE g.g_user = c.c_user) AS pool_gate,"
            " FALSE AS byok_ready, FALSE AS byok_strict, 0 AS byok_requests,"
        )
    else:
        context += (
            # The caller's own BYOK key for the provider: the organization's when the API key is one's.
            f" FALSE AS pool_gate, EXISTS (SELECT 1 FROM ({q.fragment(f.byok_keys)}) b"
            " WHERE b.b_provider = t.t_provider"
            " AND CASE WHEN c.c_org IS NULL THEN b.b_user = c.c_user ELSE b.b_org = c.c_org END) AS byok_ready,"
            # Strict BYOK (fall-back off): whether the caller brought a key for the provider in any state,
            # read only for such callers.
            f" CASE WHEN c.c_fallback THEN FALSE ELSE EXISTS (SELECT 1 FROM ({q.fragment(f.byok_brought)}) s"
            " WHERE s.b_provider = t.t_provider"
            " AND CASE WHEN c.c_org IS NULL THEN s.b_user = c.c_user ELSE s.b_org = c.c_org END) END AS byok_strict,"
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
    # What the payer can spend: the main account's balance less its holds; what the API key's monthly
    # limit leaves: the limit less the month's settled charges and the key's open holds (requests in
    # flight). The model's cap: the client's (max_tokens: the smaller of its two fields; NULL: none;
    # 0: no completion, embeddings) bounded by the model's output limit.
    routed = (
        "SELECT x.*,"
        f" CASE WHEN x.is_pool THEN '{Route.POOL}' WHEN x.byok_ready THEN '{Route.BYOK}'"
        f" ELSE '{Route.PLATFORM}' END AS route,"
        f" (NOT x.is_pool AND NOT x.platform_only AND x.c_mode <> '{platform_only}'"
        f" AND {exchange_open_sql('x.global_rate', 'x.default_rate_open')})"
        " AS include_exchange,"
        " (SELECT b.balance - b.held FROM billing_account b WHERE b.id = x.account_id) AS spendable,"
        " CASE WHEN x.c_limit IS NULL OR x.t_provider IS NULL THEN NULL ELSE x.c_limit"
        " - COALESCE((SELECT s.charged FROM billing_apikeymonthlyspend s WHERE s.api_key_id = x.c_id"
        " AND s.month = x.month), 0)"
        " - COALESCE((SELECT SUM(o.amount) FROM billing_balancehold o WHERE o.api_key_id = x.c_id), 0)"
        " END AS limit_left,"
        f" {token_cost_sql('x.prompt_tokens', 'x.t_in')} AS prompt_cost,"
        " CASE WHEN x.max_tokens = 0 THEN 0 ELSE LEAST(x.max_tokens, COALESCE(x.t_max_out, x.default_max_tokens))"
        " END AS model_cap FROM plan_context x"
    )
    # The cap to forward: on the platform route, no more completion tokens (for each of the `choices`)
    # than the payer's spendable balance and the limit's remainder pay for once the prompt's worst case
    # is paid; elsewhere the model's cap. The prompt's cost plus choices × cap output tokens, each
    # rounded half-even, never exceeds that budget (an integer), since the exact product does not.
    afford = (
        "floor((LEAST(y.spendable, y.limit_left) - y.prompt_cost)::numeric * 1000000"
        " / (y.choices::numeric * y.t_out))"
    )
    capped = (
        "SELECT y.*, CASE"
        f" WHEN y.route <> '{Route.PLATFORM}' OR y.model_cap = 0 OR y.t_out = 0"
        " OR LEAST(y.spendable, y.limit_left) IS NULL THEN y.model_cap"
        f" ELSE LEAST(y.model_cap, GREATEST({afford}, 0))::bigint END AS cap"
        " FROM plan_routed y"
    )
    worst = (
        "SELECT z.*, CASE WHEN z.t_provider IS NULL THEN 0"
        f" ELSE z.prompt_cost + {token_cost_sql('z.choices * z.cap', 'z.t_out')}"
        " END AS worst_case FROM plan_capped z"
    )
    # What the first route reserves, and whether the platform route would cross the monthly limit.
    reserved = (
        "SELECT w.*,"
        f" CASE w.route WHEN '{Route.PLATFORM}' THEN w.worst_case"
        # This request is the month's (byok_requests + 1)-th: billing's free tier says whether it owes the fee.
        f" WHEN '{Route.BYOK}' THEN CASE WHEN billing_byok_fee_due(w.byok_requests + 1, w.free_requests)"
        f" THEN {percent_of_sql('w.worst_case', fee_percent)} ELSE 0 END ELSE 0 END AS hold_amount,"
        " COALESCE(w.limit_left < w.worst_case, FALSE) AS over_limit"
        " FROM plan_worst w"
    )
    refused = (
        "SELECT h.*, CASE"
        f" WHEN h.t_provider IS NULL THEN '{Refusal.UNKNOWN_MODEL}'"
        f" WHEN h.is_pool AND h.t_clearance <> '{cleared}' THEN '{Refusal.POOL_PROVIDER_NOT_CLEARED}'"
        f" WHEN h.is_pool AND NOT h.pool_gate THEN '{Refusal.POOL_GATE}'"
        # Strict BYOK: the member's own key for the provider cannot serve, and the platform may not.
        f" WHEN h.route = '{Route.PLATFORM}' AND h.byok_strict THEN '{Refusal.BYOK_UNAVAILABLE}'"
        f" WHEN h.route = '{Route.PLATFORM}' AND h.over_limit THEN '{Refusal.MONTHLY_LIMIT}'"
        # Not one completion token affordable: the limit's remainder or the balance is what binds.
        f" WHEN h.route = '{Route.PLATFORM}' AND h.model_cap > 0 AND h.cap < 1 THEN CASE"
        " WHEN h.limit_left IS NOT NULL AND (h.spendable IS NULL OR h.limit_left < h.spendable)"
        f" THEN '{Refusal.MONTHLY_LIMIT}' ELSE '{Refusal.INSUFFICIENT_BALANCE}' END"
        f" WHEN h.hold_amount > 0 AND h.account_id IS NULL THEN '{Refusal.NO_ACCOUNT}'"
        " END AS refusal FROM plan_reserved h"
    )
    return (
        f"plan_context AS MATERIALIZED ({context}), plan_routed AS MATERIALIZED ({routed}),"
        f" plan_capped AS MATERIALIZED ({capped}), plan_worst AS MATERIALIZED ({worst}),"
        f" plan_reserved AS MATERIALIZED ({reserved}), plan AS MATERIALIZED ({refused})"
    )


def plan_row(row) -> PlanRow:
    values = dict(zip(PLAN_COLUMNS, row))
    caller = Caller(
        api_key_id=values["c_id"], user_id=values["c_user"], organization_id=values["c_org"],
        key_pool_mode=values["c_mode"], byok_fallback=bool(values["c_fallback"]), monthly_limit=values["c_limit"],
        last_used_at=values["c_used"], account_id=values["account_id"],
    )
    return PlanRow(
        caller=caller, provider_id=values["t_provider"], provider_slug=values["t_slug"],
        base_url=values["t_base_url"], model=values["t_name"], input_price=values["t_in"],
        output_price=values["t_out"], route=values["route"], include_exchange=bool(values["include_exchange"]),
        worst_case=values["worst_case"],
        hold_amount=values["hold_amount"], over_limit=bool(values["over_limit"]), refusal=values["refusal"],
        cap=values["cap"], cap_field=values["t_cap_field"], spendable=values["spendable"],
        limit_left=values["limit_left"],
    )


# A request's own facts, the plan's inputs: (name, SQL type).
ASK_FIELDS = (
    ("n", "integer"), ("request_id", "text"), ("raw_hash", "text"), ("slug", "text"), ("model", "text"),
    ("is_pool", "boolean"), ("platform_only", "boolean"), ("prompt_tokens", "bigint"), ("max_tokens", "bigint"),
    ("choices", "bigint"), ("default_max_tokens", "bigint"),
    ("month", "date"), ("month_from", "timestamptz"), ("default_rate_open", "boolean"), ("free_requests", "bigint"),
)


def _asks_of_values(q: Sql) -> str:
    """`asks` as one row of placeholders (reading a plan alone)."""
    columns = ", ".join(
        f"CAST({q.value(name)} AS BIGINT) AS {name}" if kind in ("bigint", "integer") else f"{q.value(name)} AS {name}"
        for name, kind in ASK_FIELDS
    )
    return f"asks AS (SELECT {columns})"


def asks_of_json(q: Sql) -> str:
    """`asks` as the rows of one JSON parameter (a batch)."""
    columns = ", ".join(f"{name} {kind}" for name, kind in ASK_FIELDS)
    return f"asks AS MATERIALIZED (SELECT * FROM json_to_recordset(CAST({q.value('asks')} AS json)) AS a({columns}))"


def ask_values(ask: Ask, *, n: int = 0, request_id: str = "") -> dict:
    return {
        "n": n, "request_id": request_id, "raw_hash": ask.raw_hash, "slug": ask.slug, "model": ask.model,
        "is_pool": ask.pool, "platform_only": ask.platform_only, "prompt_tokens": ask.prompt_tokens,
        "max_tokens": ask.max_tokens, "choices": ask.choices, "default_max_tokens": settings.HEADROOM_DEFAULT_MAX_TOKENS,
        "month": ask.month, "month_from": ask.month_from,
        "default_rate_open": exchange_open_at(None), "free_requests": settings.HEADROOM_BYOK_FREE_REQUESTS,
    }


def fee_percent() -> Decimal:
    return Decimal(settings.HEADROOM_BYOK_FEE_PERCENT)


@lru_cache(maxsize=8)
def _plan_sql(fee_percent: Decimal, pool: bool) -> Sql:
    q = Sql()
    asks = _asks_of_values(q)
    plan = plan_ctes(fragments(), q, fee_percent=fee_percent, pool=pool)
    q.finish(f"WITH {asks}, {plan} SELECT {', '.join(PLAN_COLUMNS)} FROM plan")
    return q


async def plan_read(*, ask: Ask) -> PlanRow | None:
    """The plan alone (no hold, no pick): who is calling, for the endpoints that route nothing."""
    await fragments_ready()
    q = _plan_sql(fee_percent(), ask.pool)
    params = q.params(ask_values(ask))
    row = await pg_fetchone(q.pg, params, durable=False)
    return None if row is None else plan_row(row)
