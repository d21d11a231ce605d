"""The settlement: everything after the answer, exactly once per request, in one statement per batch.

The request record (a request already recorded moves nothing again), the charge capped at the
balance, the BYOK month count and fee past the free tier, the reward or exchange earning, ledger
transactions and entries, cached balances, the release of the holds, the key's counters, the end of
its lease. Amounts (cost, fee, reward, rate) are pool.services'; pool_settle (PL/pgSQL) caps them at
the balance and applies them, for each request of the batch in turn, and computes the one amount that
depends on the cap: an exchange earning is the rate of what was collected (SPEC "Served ≤
collected"). Other apps' tables are written by those apps' SQL functions, once per batch.
"""

from accounts.services import LAST_USED_RESOLUTION
from billing.models import Account, LedgerTransaction
from pool.hotpath.batch import batcher
from pool.hotpath.db import lane_fetchall
from pool.hotpath.dtos import Settled, SettleSpec
from pool.hotpath.sqltext import json_rows, pg_array

PLATFORM_KINDS = (Account.Kind.REVENUE, Account.Kind.POOL_REWARDS, Account.Kind.EXCHANGE_PAYOUTS)
# pool_settle's constants, passed rather than repeated in its text: the platform accounts in the order
# above, the ledger kinds of a charge and of a BYOK fee, and how stale an API key's last use may be.
CONSTANTS = ("{" + ",".join(PLATFORM_KINDS) + "}", LedgerTransaction.Kind.USAGE, LedgerTransaction.Kind.BYOK_FEE,
             LAST_USED_RESOLUTION)
LOCK_FIRST = 6  # the parameter that asks pool_settle to lock the accounts before it reads them


SETTLE_ATTEMPTS = 3


class PlatformAccountMissing(Exception):
    """A platform account the settlement posts to does not exist yet; nothing was written."""


def _settle_json(s: SettleSpec) -> dict:
    """One settlement as pool_settle reads it (its json_to_recordset column list)."""
    payer = s.payer_account_id or None
    byok_user, byok_org = s.byok_owner or (None, None)
    row = {
        **s.record, "error_code": s.record["error_code"][:64], "payer": payer, "charge": s.charge if payer else 0,
        "charge_key": s.charge_key, "charge_memo": s.charge_memo[:200], "byok_user": byok_user,
        "byok_org": byok_org, "month": s.month, "free": s.free_requests, "fee": s.fee if payer else 0,
        "fee_key": s.fee_key, "fee_memo": s.fee_memo[:200], "hold_ids": list(s.hold_ids) if payer else [],
        "key_id": s.key_id, "stats": s.key_id is not None and s.stats, "touch": s.touch_api_key,
        "limited": s.limited,
        "earning": s.earning is not None,
    }
    if s.credit:
        c = s.credit
        row.update(credit=c.amount, credit_account=c.account_id, credit_source=c.source_kind,
                   credit_kind=c.txn_kind, credit_key=c.idempotency_key, credit_memo=c.memo[:200])
    if s.earning:
        e = s.earning
        # The rate in basis points too: pool_settle computes the earning from what it collected with
        # core.money's rounding in SQL (basis_points_of_sql), which takes integers.
        row.update(earning_account=e.account_id, settled_cost=e.settled_cost, rate=e.rate_percent,
                   rate_bp=int(e.rate_percent * 100), rate_rule=e.rule_id, rate_scope=e.scope)
    return row


SETTLE_SQL = (
    "SELECT * FROM pool_settle(CAST($1 AS json), CAST($2 AS bigint[]), CAST($3 AS text[]), CAST($4 AS bigint[]),"
    " CAST($5 AS bigint[]), CAST($6 AS date[]), CAST($7 AS boolean), CAST($8 AS text[]), CAST($9 AS text),"
    " CAST($10 AS text), CAST($11 AS interval))"
)


async def _settle_batch(specs: list[SettleSpec]) -> list[Settled]:
    from psycopg.errors import CheckViolation, DeadlockDetected, NotNullViolation

    batch = [_settle_json(s) for s in specs]
    # The accounts the batch moves, for pool_settle to lock before it reads them when asked to.
    accounts = {a for r in batch for a in (r["payer"], r.get("credit_account")) if a}
    platform = ({Account.Kind.REVENUE for r in batch if r["charge"] or r["fee"]}
                | {r["credit_source"] for r in batch if r.get("credit_source")})
    # The BYOK month counters it moves, locked first in one order, but only when it moves more than one:
    # a single one is locked where it is written, which is before any account all the same. (The keys'
    # counters are written for the whole batch at once, in key order, after them: keys_stats_add.)
    counted = {(r["byok_user"], r["byok_org"], r["month"]) for r in batch if r["byok_user"] or r["byok_org"]}
    several = len(counted) > 1
    params = [
        json_rows(batch), pg_array(accounts), pg_array(platform),
        pg_array({user for user, _, _ in counted if user} if several else ()),
        pg_array({org for _, org, _ in counted if org} if several else ()),
        pg_array({month.isoformat() for _, _, month in counted}), False, *CONSTANTS,
    ]
    for attempt in range(SETTLE_ATTEMPTS):
        try:
            rows = await lane_fetchall("settle", SETTLE_SQL, params)
            break
        except CheckViolation:
            # A concurrent debit left a payer less than what the batch charged from the balance it read:
            # nothing was written; settle again with the accounts locked before they are read.
            if params[LOCK_FIRST]:
                raise
            params[LOCK_FIRST] = True
        except DeadlockDetected:
            # Against a writer that locks the same rows in another order; nothing was written.
            if attempt == SETTLE_ATTEMPTS - 1:
                raise
        except NotNullViolation as error:
            if error.diag.table_name == "billing_ledgerentry":
                raise PlatformAccountMissing() from None
            raise
    settled = {request_id: Settled(inserted=inserted, charged=charged, fee=fee, reward=reward)
               for request_id, inserted, charged, fee, reward in rows}
    return [settled[s.record["request_id"]] for s in specs]


async def settle(spec: SettleSpec) -> Settled:
    """Apply a settlement exactly once (keyed by the request id): with the settlements waiting
    alongside in one statement and one commit (pool.hotpath.batch)."""
    return await batcher("settle", _settle_batch).submit(spec)
