"""How the gateway reaches the database without blocking its event loop.

The hot path's statements (pool.hotpath) run on psycopg's async
connections, on the event loop itself: no thread hand-off per phase, which
PERFORMANCE.md measured at a large share of the per-request budget. Each
phase is one statement (shared by a batch of requests: pool.hotpath.batch) in
autocommit, on connections opened from Django's own connection settings. A
batcher runs one statement at a time, so each of its two kinds has a *lane*:
one connection of its own per event loop, with no pool to check it out of and
back into (that cost the gateway as much CPU as the statement's own driver
work). The rare statements outside a batch use a pool per event loop (a pool
belongs to the loop it was opened on), opened on first use. Statements are
prepared on the server after a few uses (HEADROOM_DB_PREPARE_THRESHOLD; -1
behind a transaction-mode connection pooler such as PgBouncer).

The rare paths (error bookkeeping, first-use account creation) run ORM code in
a worker thread through Django's connection (`db_call`).
"""

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from psycopg import AsyncConnection, AsyncRawCursor
from psycopg.pq import TransactionStatus

T = TypeVar("T")
_pools: dict[tuple[asyncio.AbstractEventLoop, bool], "asyncio.Task"] = {}  # (loop, durable) -> opening
_lanes: dict[tuple[asyncio.AbstractEventLoop, str], "Lane"] = {}  # (loop, name) -> lane
_connect_kwargs_cache: list[dict] = []  # one process, one database


def _run(fn: Callable[..., T], kwargs: dict) -> T:
    try:
        return fn(**kwargs)
    finally:
        # Back to Django's connection pool (or closed, when broken): a worker thread holds no
        # connection between calls, so threads that come and go leave no session behind.
        connection.close()


async def db_call(fn: Callable[..., T], /, **kwargs) -> T:
    """Run synchronous ORM code in the loop's default thread pool (not one shared thread: requests
    must not queue behind one another); each pool thread keeps its own Django connection."""
    return await sync_to_async(_run, thread_sensitive=False)(fn, kwargs)


def _connect_kwargs() -> dict:
    params = dict(connection.get_connection_params())
    for django_only in ("cursor_factory", "context", "pool", "server_side_binding"):
        params.pop(django_only, None)
    threshold = settings.HEADROOM_DB_PREPARE_THRESHOLD
    params["prepare_threshold"] = threshold if threshold >= 0 else None
    params["autocommit"] = True
    return params


def _configure(durable: bool):
    from psycopg.types.numeric import Int8Dumper

    async def configure(conn) -> None:
        # Every integer as bigint: psycopg would otherwise pick int2, int4 or int8 by each value, so one
        # statement would be prepared once per combination, and arithmetic on two small values could
        # overflow their type.
        conn.adapters.register_dumper(int, Int8Dumper)
        # Timestamps in UTC like Django's own connections.
        await conn.execute("SET TIME ZONE 'UTC'")
        # The hot path's statements are prepared (prepare_threshold) and every one of them is a few
        # indexed lookups whose best plan does not depend on the values: plan once per connection.
        # Left to choose, PostgreSQL re-planned them per execution (~0.4 ms each, most of their CPU).
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        if not durable:
            await conn.execute("SET synchronous_commit = off")

    return configure


async def _kwargs() -> dict:
    if not _connect_kwargs_cache:
        # In a worker thread: Django's connection settings are read through its per-thread connection.
        _connect_kwargs_cache.append(await sync_to_async(_connect_kwargs, thread_sensitive=False)())
    return _connect_kwargs_cache[0]


async def _open_pool(durable: bool):
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(
        kwargs=await _kwargs(),
        min_size=settings.HEADROOM_GATEWAY_DB_POOL_MIN,
        max_size=settings.HEADROOM_GATEWAY_DB_POOL_MAX,
        timeout=settings.HEADROOM_GATEWAY_DB_WAIT_SECONDS,
        configure=_configure(durable),
        open=False,
        name="headroom-gateway" if durable else "headroom-gateway-picks",
    )
    await pool.open()
    return pool


async def _pool(durable: bool):
    key = (asyncio.get_running_loop(), durable)
    opening = _pools.get(key)
    if opening is None:
        # One opening per loop, shared by the requests that arrive while it connects.
        opening = _pools[key] = key[0].create_task(_open_pool(durable))
    try:
        return await asyncio.shield(opening)
    except BaseException:
        if opening.done() and (opening.cancelled() or opening.exception() is not None):
            _pools.pop(key, None)  # a failed opening is retried by the next request
        raise


async def pg_fetchone(sql: str, params: Sequence, *, durable: bool = True) -> tuple | None:
    """One statement on the loop's pool, in autocommit; its first row.

    Statements use PostgreSQL's own placeholders ($1, $2…) through a raw cursor: psycopg would
    otherwise rewrite each `%s` statement's text on every execution once it is longer than 4 KB, as
    the first hop's is (it caches only shorter ones).

    There are two pools. `durable=False` is the first hop's (the plan, the hold and the key pick) and
    its rare follow-ups, on connections with `synchronous_commit = off`, whose commits are visible at once but
    flushed to disk a moment later, so their row locks are released without waiting for the disk.
    Only what may be lost in a database crash without losing money goes there (a request in flight
    when the database crashes is lost anyway, and the WAL is flushed in order, so a later durable
    commit — the settlement — carries the pick's with it). The durable pool is the settlements':
    kept apart so that a new request's first hop never queues behind settlements waiting on rows.
    """
    pool = await _pool(durable)
    async with pool.connection() as conn, AsyncRawCursor(conn) as cursor:
        await cursor.execute(sql, params)
        return await cursor.fetchone()


class Lane:
    """One connection for a batcher's statements (pool.hotpath.batch), which come one at a time.

    Opened on first use, configured like the pools' connections (see pg_fetchone for `durable`). A
    statement the server refuses leaves the connection idle, and so does one whose caller is
    cancelled (psycopg cancels it on the server and waits for the connection to be idle); one that
    leaves it in any other state (broken, or a cancellation that failed) closes it, and the next
    statement opens a new one, as a pool would have discarded it. Two statements at once would
    interleave on the wire; the lane refuses that rather than risk it.

    Like psycopg's pool, a lane does not keep a connection for ever: one idle for MAX_IDLE_S (a proxy
    or a firewall may have dropped it meanwhile) or older than MAX_LIFETIME_S is replaced before the
    next statement.
    """

    MAX_IDLE_S = 600.0  # psycopg_pool's max_idle
    MAX_LIFETIME_S = 3600.0  # psycopg_pool's max_lifetime

    def __init__(self, name: str, *, durable: bool):
        self.name = name
        self._durable = durable
        self._conn: AsyncConnection | None = None
        self._cursor: AsyncRawCursor | None = None
        self._busy = False
        self._opened_at = self._used_at = 0.0

    async def fetchall(self, sql: str, params: Sequence) -> list[tuple]:
        if self._busy:
            raise RuntimeError(f"lane {self.name!r} already has a statement in flight")
        self._busy = True
        try:
            now = time.monotonic()
            if self._conn is not None and (now - self._used_at > self.MAX_IDLE_S
                                           or now - self._opened_at > self.MAX_LIFETIME_S):
                await self.close()
            if self._conn is None:
                conn = await AsyncConnection.connect(**await _kwargs())
                try:
                    await _configure(self._durable)(conn)
                except BaseException:
                    await conn.close()
                    raise
                self._conn, self._cursor = conn, AsyncRawCursor(conn)
                self._opened_at = now
            self._used_at = now
            try:
                await self._cursor.execute(sql, params)
                return await self._cursor.fetchall()
            except BaseException:
                if not self._clean():
                    await self.close()
                raise
        finally:
            self._busy = False

    def _clean(self) -> bool:
        """Whether the connection is idle, outside a transaction, after an error: a statement the
        server refused leaves it usable; a broken or interrupted one does not."""
        return self._conn is not None and self._conn.pgconn.transaction_status == TransactionStatus.IDLE

    async def close(self) -> None:
        conn, self._conn, self._cursor = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


async def lane_fetchall(name: str, sql: str, params: Sequence, *, durable: bool = True) -> list[tuple]:
    """One statement, in autocommit, on the current loop's lane `name`; all its rows. Only a batcher
    (one statement in flight at a time) may use a lane."""
    key = (asyncio.get_running_loop(), name)
    lane = _lanes.get(key)
    if lane is None:
        lane = _lanes[key] = Lane(name, durable=durable)
    return await lane.fetchall(sql, params)


async def close_all() -> None:
    """Close the current loop's lanes and pools (ASGI lifespan shutdown)."""
    loop = asyncio.get_running_loop()
    for key in [k for k in _lanes if k[0] is loop]:
        await _lanes.pop(key).close()
    for key in [k for k in _pools if k[0] is loop]:
        opening = _pools.pop(key)
        with contextlib.suppress(Exception):
            await (await opening).close()
