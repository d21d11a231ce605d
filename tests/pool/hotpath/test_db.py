"""A batcher's lane (pool.hotpath.db.Lane): one connection per event loop and kind of statement, kept
across statements and replaced only when it breaks; and the pools' recovery once the database has
gone away (db.after_unavailable).

Why these exist: the lane replaced a pool checkout per statement, which cost the gateway about a third
of its database CPU at concurrency 1 (bench/README.md); they pin how the lane keeps, refuses and
replaces its connection, internals that no request-level test can see."""

import asyncio

import psycopg
import pytest

from pool.hotpath import db
from tests.pool.helpers import run_on_own_loop as run

pytestmark = [pytest.mark.design, pytest.mark.django_db(transaction=True)]
PID = "SELECT pg_backend_pid()"


async def _pid() -> int:
    return (await db.lane_fetchall("test", PID, []))[0][0]


def test_a_lane_keeps_its_connection_through_a_refused_and_a_cancelled_statement():
    """Why: reconnecting after every error would bring back the per-statement connection cost."""
    async def scenario():
        first = await _pid()
        with pytest.raises(psycopg.errors.DivisionByZero):
            await db.lane_fetchall("test", "SELECT 1 / 0", [])
        assert await _pid() == first

        # A cancelled caller: the driver cancels the statement on the server, the connection is idle again.
        sleeping = asyncio.create_task(db.lane_fetchall("test", "SELECT pg_sleep(30)", []))
        await asyncio.sleep(0.3)
        sleeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeping
        async with asyncio.timeout(5):
            assert await _pid() == first

    run(scenario())


def test_a_broken_connection_fails_its_statement_and_the_next_one_reconnects():
    """Why: a kept connection must not outlive its server session; the next statement gets a new one."""
    async def scenario():
        first = await _pid()
        async with await psycopg.AsyncConnection.connect(**await db._kwargs()) as other:
            await other.execute("SELECT pg_terminate_backend(%s)", [first])
        with pytest.raises(psycopg.OperationalError):
            await _pid()
        assert await _pid() != first

    run(scenario())


def test_a_lane_refuses_a_second_statement_while_one_is_in_flight():
    """Why: one connection without a pool serves one statement at a time; two would interleave on the wire."""
    async def scenario():
        slow = asyncio.create_task(db.lane_fetchall("test", "SELECT 1 FROM pg_sleep(0.3)", []))
        await asyncio.sleep(0.05)
        with pytest.raises(RuntimeError, match="already has a statement in flight"):
            await db.lane_fetchall("test", "SELECT 2", [])
        assert await slow == [(1,)]
        assert await db.lane_fetchall("test", "SELECT 2", []) == [(2,)]

    run(scenario())


@pytest.mark.parametrize("limit", ["MAX_IDLE_S", "MAX_LIFETIME_S"])
def test_a_lane_replaces_a_connection_idle_or_old_past_its_limit(limit, monkeypatch):
    """Why: as a pool would, a lane retires a connection a proxy or firewall may have dropped meanwhile."""
    async def scenario():
        first = await _pid()
        assert await _pid() == first  # within both limits: kept
        monkeypatch.setattr(db.Lane, limit, -1.0)
        assert await _pid() != first

    run(scenario())


def test_after_a_failure_for_lack_of_the_database_the_pool_replaces_its_other_dead_connections():
    """Why: after a PostgreSQL restart every idle pooled connection is dead, and psycopg's pool finds
    out only by handing each one to a request that then fails (a 503 each); the gateway, on the first
    such failure, has the pool test its idle connections (db.after_unavailable)."""
    async def scenario():
        pool = await db._pool(True)
        await pool.wait()  # its minimum of connections, idle
        dead = [conn.info.backend_pid for conn in pool._pool]
        assert len(dead) >= 2
        async with await psycopg.AsyncConnection.connect(**await db._kwargs()) as other:
            for pid in dead:  # what a server restart does to them
                await other.execute("SELECT pg_terminate_backend(%s)", [pid])
            while (await (await other.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                              [dead])).fetchone())[0]:
                await asyncio.sleep(0.02)
        with pytest.raises(psycopg.OperationalError) as failed:
            await db.pg_fetchone(PID, [])
        assert db.unavailable(failed.value)  # the gateway's 503, and the cue for the check below
        db.after_unavailable()
        await db._checks[(asyncio.get_running_loop(), True)]

        # every connection the pool hands out now is alive, the idle ones and new ones alike
        pids = await asyncio.gather(*(db.pg_fetchone("SELECT pg_backend_pid() FROM pg_sleep(0.1)", [])
                                      for _ in range(pool.max_size)))
        assert not {row[0] for row in pids} & set(dead)

    run(scenario())


def test_only_a_lost_server_counts_as_the_database_being_unavailable():
    """Why: the gateway answers 503 (retry) for those and 500 (a bug, logged) for everything else; a
    deadlock or a cancelled statement is an OperationalError as well, but the statement's fault."""
    from django.db import utils as django_db

    def wrapped(error):  # as Django's ORM raises it (db_call)
        outer = django_db.OperationalError(*error.args)
        outer.__cause__ = error
        return outer

    lost = [psycopg.errors.AdminShutdown("terminating connection"), psycopg.errors.CannotConnectNow("starting up"),
            psycopg.errors.ConnectionFailure("connection failure"), psycopg.OperationalError("connection failed"),
            psycopg.InterfaceError("the connection is closed"), wrapped(psycopg.OperationalError("connection failed"))]
    faulty = [psycopg.errors.DeadlockDetected("deadlock"), psycopg.errors.QueryCanceled("canceled"),
              psycopg.errors.SerializationFailure("could not serialize"),
              psycopg.errors.DivisionByZero("division by zero"), wrapped(psycopg.errors.DeadlockDetected("deadlock")),
              RuntimeError("a bug")]
    assert [db.unavailable(e) for e in lost] == [True] * len(lost)
    assert [db.unavailable(e) for e in faulty] == [False] * len(faulty)
