"""The floor: the least a gateway of Headroom's shape adds on this machine, as a reference beside it.

Headroom's guarantees fix the shape of its hot path: an ASGI server receives the request, a first
PostgreSQL statement commits what must be visible before the upstream call (the hold, the key pick),
the upstream call, then a second statement commits the settlement to disk before the response ends.
This app does exactly that and nothing else: no authentication, no routing, no prices, no money. A
one-row insert committed without waiting for the disk, the upstream call on one aiohttp session, an
update of that row committed and flushed, then the upstream's bytes back to the client. It runs like
Headroom (uvicorn, one worker, the same core, the same PostgreSQL with psycopg's async pool), so its
added latency is what the machine charges for the shape itself: round trips between processes that
wake from idle, a flush to disk, two HTTP hops. Not part of the product; bench/run.py starts it.

Configured by environment: FLOOR_DATABASE_URL (a libpq URL), FLOOR_UPSTREAM (the fake provider's
chat-completions URL), FLOOR_UPSTREAM_KEY (its bearer token).
"""

import os

import aiohttp
from psycopg import AsyncRawCursor
from psycopg_pool import AsyncConnectionPool

TABLE = "bench_floor"
_state: dict = {}


async def _configure_fast(conn) -> None:
    await conn.execute("SET synchronous_commit = off")


async def _startup() -> None:
    dsn = os.environ["FLOOR_DATABASE_URL"]
    kwargs = {"autocommit": True, "prepare_threshold": 0}
    # Two pools, as Headroom has: the first statement's commits are not waited for on disk, the second's are.
    _state["fast"] = AsyncConnectionPool(dsn, kwargs=kwargs, min_size=2, max_size=8, configure=_configure_fast,
                                         open=False)
    _state["durable"] = AsyncConnectionPool(dsn, kwargs=kwargs, min_size=2, max_size=8, open=False)
    for pool in (_state["fast"], _state["durable"]):
        await pool.open()
    async with _state["durable"].connection() as conn:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY,"
                           " started_at timestamptz NOT NULL, settled_at timestamptz)")
    _state["http"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    _state["upstream"] = os.environ["FLOOR_UPSTREAM"]
    _state["headers"] = {"Authorization": f"Bearer {os.environ['FLOOR_UPSTREAM_KEY']}",
                         "Content-Type": "application/json"}


async def _shutdown() -> None:
    await _state["http"].close()
    for pool in (_state["fast"], _state["durable"]):
        await pool.close()


async def _one(sql: str, params: tuple, *, durable: bool) -> tuple:
    async with _state["durable" if durable else "fast"].connection() as conn, AsyncRawCursor(conn) as cursor:
        await cursor.execute(sql, params)
        return await cursor.fetchone()


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["method"] != "POST":  # the readiness probe
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ready"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    (row_id,) = await _one(f"INSERT INTO {TABLE} (started_at) VALUES (now()) RETURNING id", (), durable=False)
    async with _state["http"].post(_state["upstream"], data=body, headers=_state["headers"]) as response:
        status, data = response.status, await response.read()
    await _one(f"UPDATE {TABLE} SET settled_at = now() WHERE id = $1 RETURNING id", (row_id,), durable=True)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
