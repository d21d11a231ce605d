"""The gateway's one hand-written statement: the least-recently-used key pick.

Why raw SQL: the pick must lock, stamp and count in a single statement so the
row lock lives only as long as that statement (autocommit). Spread over ORM
round trips inside a transaction, a pick that stalls between them (GIL, I/O)
holds its key while concurrent picks pass it over with SKIP LOCKED, and the
rotation drifts. The candidate filter itself stays ORM-built (pool.selectors);
this module only wraps it. It runs on PostgreSQL and SQLite, both tested:

- PostgreSQL: one data-modifying CTE — UPDATE … RETURNING over a sub-select
  ordered by `lru_seq` with FOR NO KEY UPDATE SKIP LOCKED (NO KEY, so a
  settlement's foreign-key share lock on the row does not hide a free key),
  `lru_seq` from a sequence (strictly increasing across processes), and the
  in-flight count raised in the same statement. The sub-select sorts on the
  statement's snapshot; if a concurrent pick committed the same key after that
  snapshot, PostgreSQL would lock and update the key just used (it re-checks
  the WHERE clause on the new row version, not the ORDER BY). The UPDATE
  therefore also requires the lru_seq the snapshot saw: a key used meanwhile
  is not taken, and the caller tries again.
- SQLite: writers are serialised (BEGIN IMMEDIATE), so the same UPDATE …
  RETURNING with `max(lru_seq) + 1`, then the in-flight count, in one
  transaction.
"""

from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from keys.models import ProviderKey, ProviderKeyLoad

LRU_SEQUENCE = "pool_key_lru_seq"
PICKED_COLUMNS = (
    "id", "secret_ciphertext", "owner_user_id", "owner_org_id", "is_platform", "exchange",
    "consecutive_429s", "failure_count",
)


def lru_pick(candidates: QuerySet[ProviderKey]) -> dict | None:
    """Pick, stamp and count the least recently used free candidate; None when none is free now."""
    inner_sql, params = candidates.order_by("lru_seq", "id").values("id")[:1].query.sql_with_params()
    qn = connection.ops.quote_name
    keys_table = qn(ProviderKey._meta.db_table)
    load_table = qn(ProviderKeyLoad._meta.db_table)
    returning = ", ".join(qn(c) for c in PICKED_COLUMNS)

    if connection.vendor == "postgresql":
        picked_columns = ", ".join(f"{keys_table}.{qn(c)}" for c in PICKED_COLUMNS)
        sql = (
            f"WITH candidate AS ({inner_sql} FOR NO KEY UPDATE OF {keys_table} SKIP LOCKED),"
            # The order was judged on this statement's snapshot; `seen` keeps the lru_seq it judged by.
            f" seen AS (SELECT id, lru_seq FROM {keys_table} WHERE id IN (SELECT id FROM candidate)),"
            f" picked AS ("
            f" UPDATE {keys_table} SET lru_seq = nextval('{LRU_SEQUENCE}'), last_used_at = now() FROM seen"
            f" WHERE {keys_table}.id = seen.id AND {keys_table}.lru_seq = seen.lru_seq"
            f" RETURNING {picked_columns}"
            f"), counted AS ("
            f" UPDATE {load_table} SET in_flight = in_flight + 1 WHERE key_id IN (SELECT id FROM picked)"
            f") SELECT {returning} FROM picked"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        return dict(zip(PICKED_COLUMNS, row)) if row else None

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {keys_table} SET lru_seq = (SELECT COALESCE(MAX(lru_seq), 0) + 1 FROM {keys_table}),"
                f" last_used_at = %s WHERE id = ({inner_sql}) RETURNING {returning}",
                [timezone.now(), *params],
            )
            row = cursor.fetchone()
            if row is None:
                return None
            cursor.execute(f"UPDATE {load_table} SET in_flight = in_flight + 1 WHERE key_id = %s", [row[0]])
    return dict(zip(PICKED_COLUMNS, row))
