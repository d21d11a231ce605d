"""The first hop of a request: its plan, its hold and its pick, in one statement shared by a batch.

The plans of a batch are its first step; then each request's hold, then each one's pick, in turn,
through the PL/pgSQL functions (each request's steps see the ones before it, as if they had come one
by one). The picks come last: each takes its provider's turn (an advisory lock) until the statement
commits. It commits without waiting for the disk (pool.hotpath.db, `durable=False`).
"""

from decimal import Decimal
from functools import lru_cache

from pool.hotpath.batch import batcher
from pool.hotpath.db import lane_fetchall
from pool.hotpath.dtos import Ask, FirstHop
from pool.hotpath.fragments import fragments, fragments_ready
from pool.hotpath.hold import hold_id_sql
from pool.hotpath.pick import NOT_PICKED, PICKED_COLUMNS, candidates_sql, owner_accounts_sql, picked
from pool.hotpath.plan import PLAN_COLUMNS, ask_values, asks_of_json, fee_percent, plan_ctes, plan_row
from pool.hotpath.sqltext import Sql, json_rows
from pool.models import RequestRecord

Route = RequestRecord.Route


@lru_cache(maxsize=8)
def _begin_sql(fee_percent: Decimal, pool: bool) -> Sql:
    """The first hop of a batch of requests, in one statement: their plans; then their holds, in the
    order of the payers' accounts; then their picks, in the order of the providers (locks are taken in
    one order, so two batches never wait on each other in a cycle), each provider's in request order.
    The picks come last: each holds its provider's turn until the statement commits."""
    f = fragments()
    q = Sql()
    # Written in order: the placeholders' values are laid out in the order they appear.
    text = f"WITH {asks_of_json(q)}, {plan_ctes(f, q, fee_percent=fee_percent, pool=pool)},"
    text += (
        " holds AS MATERIALIZED (SELECT o.n, CASE WHEN o.refusal IS NULL AND o.hold_amount > 0"
        f" THEN billing_hold_take(o.account_id, o.hold_amount, {hold_id_sql('o.request_id', 'o.route')},"
        f" o.c_id, CASE WHEN o.route = '{Route.PLATFORM}' THEN o.c_limit END, o.month_from) END AS held"
        " FROM (SELECT * FROM plan ORDER BY account_id, n) o),"
        " picks AS MATERIALIZED (SELECT o.n, pool_key_take(o.t_provider, o.ids, o.request_id) AS key_id,"
        " cardinality(o.ids) AS candidates FROM (SELECT p.n, p.t_provider, p.request_id,"
    )
    if pool:
        text += f" ARRAY({candidates_sql(f, q, route=Route.POOL, include_exchange=False, of_plan=True)})"
    else:
        byok = candidates_sql(f, q, route=Route.BYOK, include_exchange=False, of_plan=True)
        with_exchange = candidates_sql(f, q, route=Route.PLATFORM, include_exchange=True, of_plan=True)
        platform = candidates_sql(f, q, route=Route.PLATFORM, include_exchange=False, of_plan=True)
        text += (f" CASE WHEN p.route = '{Route.BYOK}' THEN ARRAY({byok})"
                 f" WHEN p.include_exchange THEN ARRAY({with_exchange}) ELSE ARRAY({platform}) END")
    text += (
        " AS ids FROM plan p JOIN holds h ON h.n = p.n WHERE p.refusal IS NULL AND (p.hold_amount = 0 OR h.held)"
        " ORDER BY p.t_provider, p.n) o)"
    )
    columns = ", ".join(f"k.{c}" for c in PICKED_COLUMNS)
    text += (
        f" SELECT p.n, {', '.join('p.' + c for c in PLAN_COLUMNS)}, COALESCE(h.held, FALSE),"
        f" COALESCE(t.candidates, 0), {columns}, {owner_accounts_sql('k')}"
        " FROM plan p JOIN holds h ON h.n = p.n LEFT JOIN picks t ON t.n = p.n"
        " LEFT JOIN keys_providerkey k ON k.id = t.key_id"
    )
    q.finish(text)
    return q


async def _begin_batch(items: list[tuple[Ask, str]]) -> list[FirstHop]:
    """One statement for the batch's pool requests and one for the others (either may be empty)."""
    width = len(PLAN_COLUMNS)
    found = {}
    for pool in (True, False):
        asks = [ask_values(ask, n=n, request_id=request_id) for n, (ask, request_id) in enumerate(items)
                if ask.pool is pool]
        if not asks:
            continue
        q = _begin_sql(fee_percent(), pool)
        for row in await lane_fetchall("begin", q.pg, q.params({"asks": json_rows(asks)}), durable=False):
            plan = plan_row(row[1:width + 1])
            held, candidates = row[width + 1], row[width + 2]
            found[row[0]] = FirstHop(plan=plan, held=bool(held), picked=picked(candidates, list(row[width + 3:])))
    return [found.get(n, FirstHop(plan=None, held=False, picked=NOT_PICKED)) for n in range(len(items))]


async def begin(*, ask: Ask, request_id: str) -> FirstHop:
    """The first hop: plan, hold and pick, with the requests waiting alongside in one statement
    (pool.hotpath.batch).

    The hold is placed only when the plan refuses nothing; the key is picked only when the hold, if
    any, is placed. Holds are named `request_id:route`."""
    await fragments_ready()
    return await batcher("begin", _begin_batch).submit((ask, request_id))
