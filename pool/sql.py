"""The gateway's hand-written SQL: the four statements of a request's hot path.

Why raw SQL: built with the ORM, one request took ~30 statements and ~13 ms of
Python; PERFORMANCE.md measured the way to a few hundred requests a second per
core as one statement per phase on psycopg's async pool. So a request makes:

1. `request_context` — one SELECT, the same text on both databases: the API
   key (valid, its user active), the model (routable), the pool gate, whether
   the caller has a BYOK key for the provider, the payer's main account, the
   BYOK month count and the global payout rate.
2. `hold_place`, then `key_take` — reserve the worst case (a conditional
   UPDATE of the payer's `held` with the hold row, so concurrent requests can
   never reserve more than the balance), then take the least recently used
   key: stamp a strictly increasing `lru_seq` and lease it to the request (a
   row, deleted at settlement: what DISABLING drains). Two statements, so a
   pick never waits on the payer's row (a settlement of the same payer holds
   it to its commit) while it holds a key or its provider's place in line.
   Both commit without waiting for the disk (pool.db, `durable=False`).
3. `settle` — everything after the answer, exactly once per request: the
   request record (its unique `request_id` is the gate: a replay inserts
   nothing and so moves nothing), the charge capped at the balance, the BYOK
   month count and fee past the free tier, the reward or exchange earning,
   ledger transactions and entries, cached balances, hold release, the key's
   counters, the end of its lease.

The rules of which rows qualify (a routable model, a key in the pool, a BYOK
key...) stay ORM Q objects in keys.selectors and exchange.selectors; this
module compiles them once per process into fragments and writes only the
joins, locks and arithmetic around them. The amounts themselves (cost, fee,
reward, earning) are computed in Python by pool.services; SQL only caps them
at the balance and applies them.

Each statement exists once per database, side by side:

- PostgreSQL: one statement per phase, on the event loop (pool.db). The pick
  is `FOR NO KEY UPDATE … SKIP LOCKED` over the candidates ordered by
  `lru_seq` (NO KEY, so a settlement's foreign-key share lock on the row does
  not hide a free key), with `lru_seq` from a sequence. The sub-select sorts
  on the statement's snapshot; a key a concurrent pick used after that
  snapshot would be re-checked by PostgreSQL only against the WHERE clause,
  so the UPDATE also requires the `lru_seq` the snapshot saw, and the caller
  tries again. The settlement is one data-modifying CTE; its steps run in the
  order the final SELECT reads them, which is also the order rows are locked
  in: rows other requests contend for as late as possible, so each is held
  only from its UPDATE to the commit — the key owner's account, the key's
  counters, the payer's account, then the platform accounts (revenue is
  moved by every charge). The charge is capped at the balance the statement's
  snapshot shows, without locking the payer's row up front; should a
  concurrent charge have taken the balance below that meanwhile, the
  account's not-below-zero CHECK refuses the whole statement, and it runs
  again with the payer's row locked first.
- SQLite: writers are serialised (BEGIN IMMEDIATE), so each phase is a short
  transaction of plain statements, in a worker thread.
"""

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from django.db import IntegrityError, connection, transaction
from django.db.models import F, QuerySet

from accounts.models import ApiKey
from billing.models import Account, LedgerTransaction
from exchange.models import PayoutRateRule
from exchange.selectors import GLOBAL_RULE
from keys.models import ProviderKey, ProviderModel
from keys.selectors import BYOK, IN_POOL, ON_EXCHANGE, PLATFORM, ROUTABLE_MODEL
from pool.db import db_call, is_postgres, pg_fetchone
from pool.selectors import Caller

LRU_SEQUENCE = "pool_key_lru_seq"
PICKED_COLUMNS = (
    "id", "secret_ciphertext", "owner_user_id", "owner_org_id", "is_platform", "exchange",
    "consecutive_429s", "failure_count",
)
PLATFORM_KINDS = (Account.Kind.REVENUE, Account.Kind.POOL_REWARDS, Account.Kind.EXCHANGE_PAYOUTS)
LedgerKind = LedgerTransaction.Kind


class Params:
    """Positional parameters collected in the order their placeholders are written."""

    def __init__(self):
        self.values: list = []

    def __call__(self, value) -> str:
        self.values.append(value)
        return "%s"

    def extend(self, values) -> None:
        self.values.extend(values)


class Named:
    """Named parameters (%(name)s), for statements without compiled fragments: one value per name."""

    def __init__(self):
        self.values: dict = {}

    def __call__(self, name: str, value) -> str:
        self.values[name] = value
        return f"%({name})s"


def _sqlite_value(value):
    # Django stores SQLite datetimes and dates as its own text formats; match them exactly.
    if isinstance(value, datetime):
        return connection.ops.adapt_datetimefield_value(value)
    if isinstance(value, date):
        return connection.ops.adapt_datefield_value(value)
    if isinstance(value, Decimal):
        return str(value)
    return value


def _sqlite_execute(cursor, sql: str, params) -> None:
    cursor.execute(sql, [_sqlite_value(v) for v in params])


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
            "pool": _compiled(keys.filter(IN_POOL).values("id")),
            "byok": _compiled(keys.filter(BYOK).values("id")),
            "platform": _compiled(keys.filter(PLATFORM).values("id")),
            "platform+exchange": _compiled(keys.filter(PLATFORM | ON_EXCHANGE).values("id")),
        },
    )


async def _fragments_ready() -> Fragments:
    if _compiled_fragments:
        return _compiled_fragments[0]
    return await db_call(_fragments)  # compiling may ask the server its version


# --- 1. the request's context -------------------------------------------------------------------


@dataclass(frozen=True)
class ContextRow:
    caller: Caller
    provider_id: int | None  # None: no routable model by that name
    provider_slug: str | None
    base_url: str | None
    model: str | None
    input_price: int | None
    output_price: int | None
    pool_clearance: str | None
    pool_gate_open: bool
    byok_ready: bool
    byok_requests: int  # this month's BYOK requests so far
    global_rate: Decimal | None


def _context_sql(f: Fragments, *, raw_hash: str, slug: str, model: str, month: date) -> tuple[str, list]:
    p = Params()
    main = Account.Kind.MAIN
    # Column order matches ContextRow.
    sql = (
        "SELECT c.c_id, c.c_user, c.c_org, c.c_mode, c.c_fallback, c.c_limit, c.c_used,"
        " t.t_provider, t.t_slug, t.t_base_url, t.t_name, t.t_in, t.t_out, t.t_clearance,"
        f" COALESCE((SELECT a.id FROM billing_account a WHERE a.organization_id = c.c_org AND a.kind = '{main}'),"
        f" (SELECT a.id FROM billing_account a WHERE c.c_org IS NULL AND a.user_id = c.c_user AND a.kind = '{main}')),"
    )
    sql += f" EXISTS (SELECT 1 FROM ({f.pool_members[0]}) g WHERE g.g_user = c.c_user),"
    p.extend(f.pool_members[1])
    sql += (
        f" EXISTS (SELECT 1 FROM ({f.byok_keys[0]}) b WHERE b.b_provider = t.t_provider"
        " AND ((c.c_org IS NULL AND b.b_user = c.c_user) OR b.b_org = c.c_org)),"
    )
    p.extend(f.byok_keys[1])
    sql += (
        " COALESCE((SELECT u.requests FROM billing_byokmonthlyusage u WHERE u.month = " + p(month) +
        " AND ((c.c_org IS NULL AND u.user_id = c.c_user) OR u.organization_id = c.c_org)), 0),"
    )
    sql += f" ({f.global_rate[0]})"
    p.extend(f.global_rate[1])
    sql += f" FROM ({f.callers[0]}) c"
    p.extend(f.callers[1])
    p.extend(f.targets[1])
    sql += f" LEFT JOIN ({f.targets[0]}) t ON t.t_slug = {p(slug)} AND t.t_name = {p(model)}"
    sql += f" WHERE c.c_hash = {p(raw_hash)}"
    return sql, p.values


def _context_row(row) -> ContextRow | None:
    if row is None:
        return None
    (api_key_id, user_id, organization_id, mode, fallback, limit, last_used, *target, account_id,
     pool_gate, byok_ready, byok_requests, rate) = row
    if last_used is not None and not is_postgres():  # SQLite: naive UTC, or its text form
        last_used = connection.ops.convert_datetimefield_value(last_used, None, connection)
    caller = Caller(api_key_id=api_key_id, user_id=user_id, organization_id=organization_id, key_pool_mode=mode,
                    byok_fallback=bool(fallback), monthly_limit=limit, last_used_at=last_used, account_id=account_id)
    return ContextRow(caller, *target, pool_gate_open=bool(pool_gate), byok_ready=bool(byok_ready),
                      byok_requests=byok_requests,
                      global_rate=None if rate is None else Decimal(str(rate)).quantize(Decimal("0.01")))


def _context_sqlite(sql: str, params: list):
    with connection.cursor() as cursor:
        _sqlite_execute(cursor, sql, params)
        return cursor.fetchone()


async def request_context(*, raw_hash: str, slug: str, model: str, month: date) -> ContextRow | None:
    """The caller and what it asks for, in one SELECT; None when the API key is not valid."""
    sql, params = _context_sql(await _fragments_ready(), raw_hash=raw_hash, slug=slug, model=model, month=month)
    if is_postgres():
        return _context_row(await pg_fetchone(sql, params, durable=False))
    return _context_row(await db_call(_context_sqlite, sql=sql, params=params))


# --- 2. reserve, then pick ------------------------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    account_id: int
    amount: int
    hold_id: str


@dataclass(frozen=True)
class PickRow:
    key: dict | None  # PICKED_COLUMNS plus the owner's main and frozen account ids; None: no free key now
    any_candidate: bool  # whether any candidate exists at all (False: no key can serve the route)


def _candidates(f: Fragments, *, route: str, provider_id: int, user_id: int, organization_id: int | None,
                exclude: tuple[int, ...]) -> tuple[str, list]:
    """The candidate keys of one route for this caller: the rule fragment plus the caller's conditions."""
    sql, params = f.candidates[route]
    p = Params()
    p.extend(params)
    k = '"keys_providerkey"'
    sql += f" AND {k}.\"provider_id\" = {p(provider_id)}"
    if route == "pool":
        # Never the requester's own keys, nor their organizations'.
        sql += (
            f" AND ({k}.\"owner_user_id\" IS NULL OR {k}.\"owner_user_id\" <> {p(user_id)})"
            f" AND ({k}.\"owner_org_id\" IS NULL OR {k}.\"owner_org_id\" NOT IN"
            f" (SELECT m.organization_id FROM accounts_membership m WHERE m.user_id = {p(user_id)}))"
        )
    elif route == "byok":
        if organization_id:
            sql += f" AND {k}.\"owner_org_id\" = {p(organization_id)}"
        else:
            sql += f" AND {k}.\"owner_user_id\" = {p(user_id)}"
    else:
        # Platform keys have no owner; an exchange key never serves its own owner.
        sql += f" AND ({k}.\"owner_user_id\" IS NULL OR {k}.\"owner_user_id\" <> {p(user_id)})"
    for key_id in exclude:
        sql += f" AND {k}.\"id\" <> {p(key_id)}"
    return sql, p.values


def _owner_accounts_sql(alias: str) -> str:
    main, frozen = Account.Kind.MAIN, Account.Kind.FROZEN
    return ", ".join(
        f"(SELECT a.id FROM billing_account a WHERE a.kind = '{kind}' AND"
        f" (a.user_id = {alias}.owner_user_id OR a.organization_id = {alias}.owner_org_id))"
        for kind in (main, frozen)
    )


def _pick_pg(candidates: tuple[str, list], request_id: str) -> tuple[str, list]:
    cand_sql, cand_params = candidates
    keys_table = '"keys_providerkey"'
    p = Params()
    p.extend(cand_params)
    returning = ", ".join(f"keys_providerkey.{c}" for c in PICKED_COLUMNS)
    columns = ", ".join(f"k.{c}" for c in PICKED_COLUMNS)
    ctes = [
        f"candidate AS ({cand_sql} ORDER BY {keys_table}.\"lru_seq\", {keys_table}.\"id\" LIMIT 1"
        f" FOR NO KEY UPDATE OF {keys_table} SKIP LOCKED)",
        # The order was judged on this statement's snapshot; `seen` keeps the lru_seq it judged by.
        "seen AS (SELECT id, lru_seq FROM keys_providerkey WHERE id IN (SELECT id FROM candidate))",
        f"picked AS (UPDATE keys_providerkey SET lru_seq = nextval('{LRU_SEQUENCE}'), last_used_at = now()"
        " FROM seen WHERE keys_providerkey.id = seen.id AND keys_providerkey.lru_seq = seen.lru_seq"
        f" RETURNING {returning})",
        "leased AS (INSERT INTO keys_providerkeylease (key_id, request_id, created_at)"
        f" SELECT id, {p(request_id)}, now() FROM picked RETURNING key_id)",
    ]
    sql = (
        "WITH " + ", ".join(ctes) +
        f" SELECT (SELECT count(*) FROM leased), {columns}, {_owner_accounts_sql('k')},"
        f" CASE WHEN k.id IS NULL THEN EXISTS ({cand_sql}) ELSE true END"
        " FROM (SELECT 1) AS one LEFT JOIN picked k ON true"
    )
    p.extend(cand_params)
    return sql, p.values


def _pick_row(row) -> PickRow:
    _, *rest = row
    *key_values, main_account, frozen_account, any_candidate = rest
    key = None
    if key_values[0] is not None:
        key = dict(zip(PICKED_COLUMNS, key_values))
        key["is_platform"], key["exchange"] = bool(key["is_platform"]), bool(key["exchange"])
        key["main_account_id"], key["frozen_account_id"] = main_account, frozen_account
    return PickRow(key=key, any_candidate=bool(any_candidate))


def _pick_sqlite(*, candidates: tuple[str, list], request_id: str, now: datetime) -> PickRow:
    cand_sql, cand_params = candidates
    returning = ", ".join(f'"{c}"' for c in PICKED_COLUMNS)
    with transaction.atomic(), connection.cursor() as cursor:
        _sqlite_execute(
            cursor,
            "UPDATE keys_providerkey SET lru_seq = (SELECT COALESCE(MAX(lru_seq), 0) + 1 FROM keys_providerkey),"
            f" last_used_at = %s WHERE id = ({cand_sql} ORDER BY \"keys_providerkey\".\"lru_seq\","
            f" \"keys_providerkey\".\"id\" LIMIT 1) RETURNING {returning}",
            [now, *cand_params],
        )
        row = cursor.fetchone()
        if row is None:
            _sqlite_execute(cursor, f"SELECT EXISTS ({cand_sql})", cand_params)
            return PickRow(key=None, any_candidate=bool(cursor.fetchone()[0]))
        key_id = row[0]
        _sqlite_execute(cursor, "INSERT INTO keys_providerkeylease (key_id, request_id, created_at) VALUES (%s, %s, %s)",
                        [key_id, request_id, now])
        _sqlite_execute(cursor, f"SELECT {_owner_accounts_sql('k')} FROM keys_providerkey k WHERE k.id = %s", [key_id])
        main_account, frozen_account = cursor.fetchone()
    return _pick_row((1, *row, main_account, frozen_account, True))


def _hold_pg(hold: Hold) -> tuple[str, dict]:
    n = Named()
    amount, account = n("amount", hold.amount), n("account", hold.account_id)
    return (
        f"WITH reserve AS (UPDATE billing_account SET held = held + {amount}"
        f" WHERE id = {account} AND balance - held >= {amount} RETURNING id),"
        " hold AS (INSERT INTO billing_balancehold (account_id, request_id, amount, created_at)"
        f" SELECT id, {n('hold_id', hold.hold_id)}, {amount}, now() FROM reserve RETURNING id)"
        " SELECT count(*) FROM hold"
    ), n.values


def _hold_sqlite(*, hold: Hold, now: datetime) -> bool:
    with transaction.atomic(), connection.cursor() as cursor:
        _sqlite_execute(cursor, "UPDATE billing_account SET held = held + %s WHERE id = %s AND balance - held >= %s",
                        [hold.amount, hold.account_id, hold.amount])
        if cursor.rowcount == 0:
            return False
        _sqlite_execute(cursor, "INSERT INTO billing_balancehold (account_id, request_id, amount, created_at)"
                        " VALUES (%s, %s, %s, %s)", [hold.account_id, hold.hold_id, hold.amount, now])
    return True


async def hold_place(hold: Hold, *, now: datetime) -> bool:
    """Reserve `hold.amount` of the payer's spendable balance (balance − held); False when it cannot
    cover it. One conditional UPDATE checks and reserves, so concurrent requests can never together
    reserve more than the balance."""
    if is_postgres():
        return bool((await pg_fetchone(*_hold_pg(hold), durable=False))[0])
    return await db_call(_hold_sqlite, hold=hold, now=now)


async def key_take(
    *, route: str, include_exchange: bool, provider_id: int, user_id: int, organization_id: int | None,
    request_id: str, exclude: tuple[int, ...] = (), now: datetime,
) -> PickRow:
    """Take the least recently used free candidate of the route for this caller, leased to
    `request_id` until it settles, in one statement."""
    f = await _fragments_ready()
    which = "platform+exchange" if route == "platform" and include_exchange else route
    candidates = _candidates(f, route=which, provider_id=provider_id, user_id=user_id,
                             organization_id=organization_id, exclude=exclude)
    if is_postgres():
        return _pick_row(await pg_fetchone(*_pick_pg(candidates, request_id), durable=False))
    return await db_call(_pick_sqlite, candidates=candidates, request_id=request_id, now=now)


# --- 3. settle ----------------------------------------------------------------------------------


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


def charge_and_fee(*, balance: int, charge: int, fee_due: int) -> tuple[int, int]:
    """What is taken: the charge, then the fee, each capped at what the balance still has.
    (The PostgreSQL statement computes the same in SQL, in its `money` step.)"""
    charged = min(charge, max(balance, 0))
    return charged, min(fee_due, max(balance - charged, 0))


RECORD_COLUMNS = (
    "request_id", "created_at", "api_key_id", "requester_id", "organization_id", "route", "task", "provider_id",
    "model", "provider_key_id", "stream", "outcome", "upstream_status", "error_code", "prompt_tokens",
    "completion_tokens", "usage_estimated", "input_price", "output_price", "cost", "reward", "payout_rate",
    "latency_ms", "ttfb_ms",
)


def _platform_account_sql(kind: str) -> str:
    return (f"(SELECT id FROM billing_account WHERE kind = '{kind}' AND user_id IS NULL"
            " AND organization_id IS NULL)")


def _settle_pg(s: SettleSpec, *, lock_payer: bool) -> tuple[str, dict]:
    n = Named()
    ctes: list[str] = []
    reads: list[str] = []  # the final SELECT reads these in order: the order the steps run and lock
    once = "EXISTS (SELECT 1 FROM rec)"

    payer = n("payer", s.payer_account_id) if s.payer_account_id else None
    if payer:
        lock = " FOR UPDATE" if lock_payer else ""
        ctes.append(f"payer AS (SELECT balance FROM billing_account WHERE id = {payer}{lock})")
    past_free = "false"
    if s.byok_owner:
        user_id, org_id = s.byok_owner
        owner = f"organization_id = {n('org', org_id)}" if org_id else f"user_id = {n('user', user_id)}"
        ctes.append(f"month_row AS (SELECT requests FROM billing_byokmonthlyusage WHERE {owner}"
                    f" AND month = {n('month', s.month)} FOR UPDATE)")
        past_free = f"COALESCE((SELECT requests FROM month_row), 0) + 1 > {n('free', s.free_requests)}"
    balance = "COALESCE((SELECT balance FROM payer), 0)" if payer else "0"
    # charge_and_fee(), in SQL: the charge, then the fee, each capped at what the balance still has.
    ctes.append(
        "money AS (SELECT charged, LEAST(fee_due, GREATEST(balance - charged, 0)) AS fee FROM ("
        f"SELECT LEAST({n('charge', s.charge)}::bigint, GREATEST(b.balance, 0)) AS charged, b.balance,"
        f" CASE WHEN {past_free} THEN {n('fee', s.fee)}::bigint ELSE 0 END AS fee_due"
        f" FROM (SELECT {balance} AS balance) b) m)"
    )
    columns = ", ".join(RECORD_COLUMNS)
    values = ", ".join(n(f"r_{c}", s.record[c]) for c in RECORD_COLUMNS)
    ctes.append(
        f"rec AS (INSERT INTO pool_requestrecord ({columns}, charged, fee, settled_at)"
        f" SELECT {values}, m.charged + m.fee, m.fee, now() FROM money m"
        " ON CONFLICT (request_id) DO NOTHING RETURNING id)"
    )
    reads.append("(SELECT count(*) FROM rec)")

    if s.byok_owner:
        user_id, org_id = s.byok_owner
        target = ("(organization_id, month) WHERE organization_id IS NOT NULL" if org_id
                  else "(user_id, month) WHERE user_id IS NOT NULL")
        ctes.append(
            "counted AS (INSERT INTO billing_byokmonthlyusage (user_id, organization_id, month, requests)"
            f" SELECT {n('count_user', None if org_id else user_id)}::bigint, {n('count_org', org_id)}::bigint,"
            f" {n('month', s.month)}::date, 1 WHERE {once} ON CONFLICT {target}"
            " DO UPDATE SET requests = billing_byokmonthlyusage.requests + 1 RETURNING id)"
        )
        reads.append("(SELECT count(*) FROM counted)")
    if s.hold_ids:
        ids = ", ".join(n(f"hold_{i}", h) for i, h in enumerate(s.hold_ids))
        ctes.append(
            f"released AS (UPDATE billing_balancehold SET released_at = now() WHERE request_id IN ({ids})"
            f" AND released_at IS NULL AND {once} RETURNING account_id, amount)"
        )
    # Ledger transactions, then their entries (the deferred trigger checks each sums to zero).
    txns = []
    if payer and s.charge:
        txns.append(("charge_txn", "m.charged", LedgerKind.USAGE, n("charge_key", s.charge_key),
                     n("charge_memo", s.charge_memo[:200])))
    if payer and s.fee and s.byok_owner:
        txns.append(("fee_txn", "m.fee", LedgerKind.BYOK_FEE, n("fee_key", s.fee_key), n("fee_memo", s.fee_memo[:200])))
    for name, amount, kind, key, memo in txns:
        ctes.append(
            f"{name} AS (INSERT INTO billing_ledgertransaction (idempotency_key, kind, memo, created_at)"
            f" SELECT {key}, '{kind}', {memo}, now() FROM money m WHERE {amount} > 0 AND {once} RETURNING id)"
        )
    revenue = _platform_account_sql(Account.Kind.REVENUE)
    legs = []
    for name, amount, *_ in txns:
        legs.append(f"SELECT t.id, {payer}::bigint, -({amount}) FROM {name} t, money m")
        legs.append(f"SELECT t.id, {revenue}, {amount} FROM {name} t, money m")
    if s.credit:
        c = s.credit
        ctes.append(
            "credit_txn AS (INSERT INTO billing_ledgertransaction (idempotency_key, kind, memo, created_at)"
            f" SELECT {n('credit_key', c.idempotency_key)}, {n('credit_kind', c.txn_kind)},"
            f" {n('credit_memo', c.memo[:200])}, now() WHERE {once} RETURNING id)"
        )
        amount = n("credit", c.amount)
        legs.append(f"SELECT t.id, {_platform_account_sql(c.source_kind)}, -{amount}::bigint FROM credit_txn t")
        legs.append(f"SELECT t.id, {n('credit_account', c.account_id)}::bigint, {amount}::bigint FROM credit_txn t")
    if legs:
        ctes.append(
            "entries AS (INSERT INTO billing_ledgerentry (transaction_id, account_id, amount, created_at)"
            " SELECT leg.*, now() FROM (" + " UNION ALL ".join(legs) + ") AS leg RETURNING id)"
        )
        reads.append("(SELECT count(*) FROM entries)")
    if s.earning:
        e = s.earning
        ledger_txn = "(SELECT id FROM credit_txn)" if s.credit else "NULL"
        ctes.append(
            "earning AS (INSERT INTO exchange_exchangeearning (provider_key_id, account_id, request_id,"
            " settled_cost, rate_percent, rate_rule_id, rate_scope, amount, ledger_transaction_id, created_at)"
            f" SELECT {n('key', s.key_id)}, {n('earning_account', e.account_id)}, {n('r_request_id', s.record['request_id'])},"
            f" {n('settled_cost', e.settled_cost)}, {n('rate', e.rate_percent)}, {n('rule', e.rule_id)}::bigint,"
            f" {n('scope', e.scope)}, {n('earned', e.amount)}, {ledger_txn}, now() WHERE {once} RETURNING id)"
        )
        reads.append("(SELECT count(*) FROM earning)")
    if s.credit:
        ctes.append(
            f"credited AS (UPDATE billing_account SET balance = balance + {n('credit', s.credit.amount)}"
            f" WHERE id = {n('credit_account', s.credit.account_id)} AND {once} RETURNING id)"
        )
        reads.append("(SELECT count(*) FROM credited)")
    if s.key_id is not None:
        key = n("key", s.key_id)
        if s.stats:
            r = s.record
            ctes.append(
                "stats AS (INSERT INTO keys_providerkeystats (key_id, requests_served, prompt_tokens,"
                f" completion_tokens, credits_earned, updated_at) SELECT {key}, 1, {n('r_prompt_tokens', r['prompt_tokens'])},"
                f" {n('r_completion_tokens', r['completion_tokens'])}, {n('credit', s.credit.amount if s.credit else 0)},"
                f" now() WHERE {once}"
                " ON CONFLICT (key_id) DO UPDATE SET requests_served = keys_providerkeystats.requests_served + 1,"
                " prompt_tokens = keys_providerkeystats.prompt_tokens + EXCLUDED.prompt_tokens,"
                " completion_tokens = keys_providerkeystats.completion_tokens + EXCLUDED.completion_tokens,"
                " credits_earned = keys_providerkeystats.credits_earned + EXCLUDED.credits_earned,"
                " updated_at = EXCLUDED.updated_at RETURNING key_id)"
            )
            reads.append("(SELECT count(*) FROM stats)")
    if payer:
        held = ("COALESCE((SELECT SUM(r.amount) FROM released r WHERE r.account_id = billing_account.id), 0)"
                if s.hold_ids else "0")
        ctes.append(
            "payer_moved AS (UPDATE billing_account SET balance = balance - m.charged - m.fee,"
            f" held = held - {held} FROM money m WHERE billing_account.id = {payer} AND {once}"
            " RETURNING billing_account.id)"
        )
        reads.append("(SELECT count(*) FROM payer_moved)")

    # The platform accounts last, in a fixed order: every charge moves revenue, so its row is locked
    # the shortest, and no two settlements take these rows in opposite orders.
    platform_moves = []
    if txns:
        platform_moves.append((Account.Kind.REVENUE, "m.charged + m.fee"))
    if s.credit:
        platform_moves.append((s.credit.source_kind, f"-{n('credit', s.credit.amount)}::bigint"))
    for i, (kind, delta) in enumerate(sorted(platform_moves)):
        ctes.append(
            f"platform_{i} AS (UPDATE billing_account SET balance = balance + {delta} FROM money m"
            f" WHERE kind = '{kind}' AND user_id IS NULL AND organization_id IS NULL AND ({delta}) <> 0 AND {once}"
            " RETURNING billing_account.id)"
        )
        reads.append(f"(SELECT count(*) FROM platform_{i})")
    if s.touch_api_key:
        ctes.append(
            f"touched AS (UPDATE accounts_apikey SET last_used_at = now() WHERE id = {n('r_api_key_id', s.record['api_key_id'])}"
            " AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds') RETURNING id)"
        )
        reads.append("(SELECT count(*) FROM touched)")
    # The request's lease on its key ends with it (a replay finds none left).
    ctes.append(f"unleased AS (DELETE FROM keys_providerkeylease WHERE request_id = {n('r_request_id', s.record['request_id'])}"
                " RETURNING key_id)")
    reads.append("(SELECT count(*) FROM unleased)")
    sql = "WITH " + ", ".join(ctes) + " SELECT m.charged, m.fee, " + ", ".join(reads) + " FROM money m"
    return sql, n.values


def _settle_sqlite(s: SettleSpec, now: datetime) -> Settled:
    """The same steps as the PostgreSQL statement, as plain statements in one transaction."""
    with transaction.atomic(), connection.cursor() as cursor:
        def run(sql, params=()):
            _sqlite_execute(cursor, sql, params)

        run("SELECT 1 FROM pool_requestrecord WHERE request_id = %s", [s.record["request_id"]])
        if cursor.fetchone():
            return Settled(inserted=False, charged=0, fee=0)
        balance = 0
        if s.payer_account_id:
            run("SELECT balance FROM billing_account WHERE id = %s", [s.payer_account_id])
            balance = cursor.fetchone()[0]
        fee_due = 0
        if s.byok_owner:
            user_id, org_id = s.byok_owner
            target = "(organization_id, month) WHERE organization_id IS NOT NULL" if org_id else \
                "(user_id, month) WHERE user_id IS NOT NULL"
            run("INSERT INTO billing_byokmonthlyusage (user_id, organization_id, month, requests)"
                f" VALUES (%s, %s, %s, 1) ON CONFLICT {target}"
                " DO UPDATE SET requests = requests + 1 RETURNING requests",
                [None if org_id else user_id, org_id, s.month])
            if cursor.fetchone()[0] > s.free_requests:
                fee_due = s.fee
        charged, fee = charge_and_fee(balance=balance, charge=s.charge, fee_due=fee_due)
        columns = ", ".join(RECORD_COLUMNS)
        run(f"INSERT INTO pool_requestrecord ({columns}, charged, fee, settled_at)"
            f" VALUES ({', '.join(['%s'] * len(RECORD_COLUMNS))}, %s, %s, %s)",
            [*(s.record[c] for c in RECORD_COLUMNS), charged + fee, fee, now])

        released = 0
        if s.hold_ids:
            marks = ", ".join(["%s"] * len(s.hold_ids))
            run(f"SELECT COALESCE(SUM(amount), 0) FROM billing_balancehold WHERE request_id IN ({marks})"
                " AND released_at IS NULL", s.hold_ids)
            released = cursor.fetchone()[0]
            run(f"UPDATE billing_balancehold SET released_at = %s WHERE request_id IN ({marks})"
                " AND released_at IS NULL", [now, *s.hold_ids])
        if s.payer_account_id and (charged or fee or released):
            run("UPDATE billing_account SET balance = balance - %s, held = held - %s WHERE id = %s",
                [charged + fee, released, s.payer_account_id])

        def post(key, kind, memo, legs):
            run("INSERT INTO billing_ledgertransaction (idempotency_key, kind, memo, created_at)"
                " VALUES (%s, %s, %s, %s) RETURNING id", [key, kind, memo[:200], now])
            txn_id = cursor.fetchone()[0]
            for account, amount in legs:
                run("INSERT INTO billing_ledgerentry (transaction_id, account_id, amount, created_at)"
                    f" VALUES (%s, {account}, %s, %s)", [txn_id, amount, now])
            return txn_id

        revenue = _platform_account_sql(Account.Kind.REVENUE)
        payer = str(int(s.payer_account_id or 0))
        if charged:
            post(s.charge_key, LedgerKind.USAGE, s.charge_memo, [(payer, -charged), (revenue, charged)])
        if fee:
            post(s.fee_key, LedgerKind.BYOK_FEE, s.fee_memo, [(payer, -fee), (revenue, fee)])
        credit_txn = None
        if s.credit:
            c = s.credit
            credit_txn = post(c.idempotency_key, c.txn_kind, c.memo,
                              [(_platform_account_sql(c.source_kind), -c.amount), (str(int(c.account_id)), c.amount)])
        if s.earning:
            e = s.earning
            run("INSERT INTO exchange_exchangeearning (provider_key_id, account_id, request_id, settled_cost,"
                " rate_percent, rate_rule_id, rate_scope, amount, ledger_transaction_id, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [s.key_id, e.account_id, s.record["request_id"], e.settled_cost, e.rate_percent, e.rule_id, e.scope,
                 e.amount, credit_txn, now])
        if s.credit:
            run("UPDATE billing_account SET balance = balance + %s WHERE id = %s", [s.credit.amount, s.credit.account_id])
        if s.key_id is not None:
            if s.stats:
                r = s.record
                run("INSERT INTO keys_providerkeystats (key_id, requests_served, prompt_tokens, completion_tokens,"
                    " credits_earned, updated_at) VALUES (%s, 1, %s, %s, %s, %s) ON CONFLICT (key_id) DO UPDATE SET"
                    " requests_served = requests_served + 1, prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                    " completion_tokens = completion_tokens + excluded.completion_tokens,"
                    " credits_earned = credits_earned + excluded.credits_earned, updated_at = excluded.updated_at",
                    [s.key_id, r["prompt_tokens"], r["completion_tokens"], s.credit.amount if s.credit else 0, now])
        if charged + fee:
            run(f"UPDATE billing_account SET balance = balance + %s WHERE id = {revenue}", [charged + fee])
        if s.credit:
            run(f"UPDATE billing_account SET balance = balance - %s WHERE id = {_platform_account_sql(s.credit.source_kind)}",
                [s.credit.amount])
        if s.touch_api_key:
            run("UPDATE accounts_apikey SET last_used_at = %s WHERE id = %s", [now, s.record["api_key_id"]])
        run("DELETE FROM keys_providerkeylease WHERE request_id = %s", [s.record["request_id"]])
    return Settled(inserted=True, charged=charged, fee=fee)


SETTLE_ATTEMPTS = 3


class PlatformAccountMissing(Exception):
    """A platform account the settlement posts to does not exist yet; nothing was written."""


async def settle(spec: SettleSpec, *, now: datetime) -> Settled:
    """Apply a settlement exactly once (keyed by the request id)."""
    if is_postgres():
        from psycopg.errors import CheckViolation, DeadlockDetected, NotNullViolation

        lock_payer = False
        try:
            for attempt in range(SETTLE_ATTEMPTS):
                try:
                    row = await pg_fetchone(*_settle_pg(spec, lock_payer=lock_payer))
                    break
                except CheckViolation:
                    # The balance fell below what the snapshot showed (a charge beyond the hold met
                    # a concurrent one): nothing was written; settle again with the payer locked first.
                    if lock_payer:
                        raise
                    lock_payer = True
                except DeadlockDetected:
                    # Only with the payer locked first, against a settlement locking the other way
                    # round; nothing was written, and one of the two goes on.
                    if attempt == SETTLE_ATTEMPTS - 1:
                        raise
        except NotNullViolation as error:
            if error.diag.table_name == "billing_ledgerentry":
                raise PlatformAccountMissing() from None
            raise
        return Settled(inserted=bool(row[2]), charged=row[0], fee=row[1])
    try:
        return await db_call(_settle_sqlite, s=spec, now=now)
    except IntegrityError as error:
        if "billing_ledgerentry.account_id" in str(error):
            raise PlatformAccountMissing() from None
        raise
