"""The pick: the least recently used candidate key of a route, leased to the request.

Which keys may serve is the rule fragment (pool.hotpath.fragments) plus the caller's own conditions
(candidates_sql); pool_key_take (PL/pgSQL, pool/sql/) orders, locks, stamps and leases, strictly
least recently used across every gateway process. The lease is a row, deleted at settlement: what
DISABLING drains. The first hop picks inside its own statement (pool.hotpath.begin); key_take is the
rare path: another key after a failure, or the fail-over route's first.
"""

from functools import lru_cache

from billing.models import Account
from pool.hotpath.db import pg_fetchone
from pool.hotpath.dtos import Picked
from pool.hotpath.fragments import Fragments, fragments, fragments_ready
from pool.hotpath.sqltext import Sql
from pool.models import RequestRecord

Route = RequestRecord.Route
PICKED_COLUMNS = (
    "id", "secret_ciphertext", "owner_user_id", "owner_org_id", "is_platform", "exchange",
    "consecutive_429s", "failure_count",
)
NOT_PICKED = Picked(key=None, candidates=0)


def candidates_sql(f: Fragments, q: Sql, *, route: str, include_exchange: bool, of_plan: bool, exclude: int = 0) -> str:
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


def owner_accounts_sql(alias: str) -> str:
    """The main and frozen account of a picked key's owner (a pool reward, an exchange earning)."""
    return ", ".join(
        f"CASE WHEN {alias}.owner_org_id IS NULL"
        f" THEN (SELECT a.id FROM billing_account a WHERE a.user_id = {alias}.owner_user_id AND a.kind = '{kind}')"
        f" ELSE (SELECT a.id FROM billing_account a WHERE a.organization_id = {alias}.owner_org_id"
        f" AND a.kind = '{kind}') END"
        for kind in (Account.Kind.MAIN, Account.Kind.FROZEN)
    )


def picked(candidates, key_values: list) -> Picked:
    *columns, main_account, frozen_account = key_values
    key = None
    if columns[0] is not None:
        key = dict(zip(PICKED_COLUMNS, columns))
        key["is_platform"], key["exchange"] = bool(key["is_platform"]), bool(key["exchange"])
        key["main_account_id"], key["frozen_account_id"] = main_account, frozen_account
    return Picked(key=key, candidates=candidates or 0)


@lru_cache(maxsize=64)
def _take_sql(route: str, include_exchange: bool, exclude: int) -> Sql:
    f = fragments()
    q = Sql()
    cands = candidates_sql(f, q, route=route, include_exchange=include_exchange, of_plan=False, exclude=exclude)
    columns = ", ".join(f"k.{c}" for c in PICKED_COLUMNS)
    q.finish(
        f"WITH cands AS MATERIALIZED (SELECT ARRAY({cands}) AS ids),"
        f" take AS MATERIALIZED (SELECT pool_key_take(CAST({q.value('provider')} AS BIGINT), c.ids,"
        f" {q.value('request_id')}) AS key_id, cardinality(c.ids) AS n FROM cands c)"
        f" SELECT take.n, {columns}, {owner_accounts_sql('k')}"
        " FROM take LEFT JOIN keys_providerkey k ON k.id = take.key_id"
    )
    return q


async def key_take(
    *, route: str, include_exchange: bool, provider_id: int, user_id: int, organization_id: int | None,
    request_id: str, exclude: tuple[int, ...] = (),
) -> Picked:
    """Take the least recently used free candidate of the route for this caller, leased to
    `request_id` until it settles: another key after a failure, or the fail-over route's first."""
    await fragments_ready()
    values = {"provider": provider_id, "user": user_id, "org": organization_id, "request_id": request_id,
              **{f"exclude_{i}": key_id for i, key_id in enumerate(exclude)}}
    q = _take_sql(route, include_exchange, len(exclude))
    row = await pg_fetchone(q.pg, q.params(values), durable=False)
    return picked(row[0], list(row[1:]))
