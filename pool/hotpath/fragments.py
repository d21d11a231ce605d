"""The routing rules' row filters, compiled from the ORM once per process into SQL fragments.

Which rows qualify (a routable model, a key in the pool, a BYOK key...) are ORM Q objects in
keys.selectors and exchange.selectors: one home per rule. The hot path's statements embed them as
compiled here, each a SELECT with a WHERE clause the statement extends with the caller's own
conditions (pool.hotpath.pick.candidates_sql).
"""

from dataclasses import dataclass

from django.db.models import F, QuerySet

from accounts.models import ApiKey
from accounts.selectors import GATEWAY_CALLER
from exchange.models import PayoutRateRule
from exchange.selectors import GLOBAL_RULE
from keys.models import ProviderKey, ProviderModel
from keys.selectors import BYOK, BYOK_BROUGHT, IN_POOL, PLATFORM, PLATFORM_OR_EXCHANGE, ROUTABLE_MODEL
from pool.hotpath.db import db_call
from pool.models import RequestRecord

Route = RequestRecord.Route


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
    byok_brought: tuple[str, tuple]
    global_rate: tuple[str, tuple]
    candidates: dict  # route -> (sql selecting keys_providerkey.id, params)


_compiled_fragments: list[Fragments] = []  # one process, one database: compiled once


def fragments() -> Fragments:
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
            ApiKey.objects.filter(GATEWAY_CALLER).order_by().values(
                c_id=F("id"), c_hash=F("hashed_key"), c_user=F("user_id"), c_org=F("organization_id"),
                c_mode=F("key_pool_mode"), c_fallback=F("byok_fallback"), c_limit=F("monthly_limit"),
                c_used=F("last_used_at"),
            )
        ),
        targets=_compiled(
            ProviderModel.objects.filter(ROUTABLE_MODEL).order_by().values(
                t_provider=F("provider_id"), t_slug=F("provider__slug"), t_base_url=F("provider__base_url"),
                t_name=F("name"), t_in=F("input_price"), t_out=F("output_price"),
                t_clearance=F("provider__pool_clearance"), t_max_out=F("max_output_tokens"),
                t_cap_field=F("provider__cap_field"),
            )
        ),
        pool_members=_compiled(keys.filter(IN_POOL).values(g_user=F("owner_user_id"))),
        byok_keys=_compiled(
            keys.filter(BYOK).values(b_provider=F("provider_id"), b_user=F("owner_user_id"), b_org=F("owner_org_id"))
        ),
        byok_brought=_compiled(
            keys.filter(BYOK_BROUGHT).values(
                b_provider=F("provider_id"), b_user=F("owner_user_id"), b_org=F("owner_org_id"))
        ),
        global_rate=(global_rate_sql, tuple(global_rate_params)),
        candidates={
            Route.POOL: _compiled(keys.filter(IN_POOL).values("id")),
            Route.BYOK: _compiled(keys.filter(BYOK).values("id")),
            Route.PLATFORM: _compiled(keys.filter(PLATFORM).values("id")),
            Route.EXCHANGE: _compiled(keys.filter(PLATFORM_OR_EXCHANGE).values("id")),  # platform + exchange
        },
    )


async def fragments_ready() -> Fragments:
    if _compiled_fragments:
        return _compiled_fragments[0]
    return await db_call(fragments)  # compiling may ask the server its version
