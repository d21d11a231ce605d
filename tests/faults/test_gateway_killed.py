"""A gateway worker killed with SIGKILL in the middle of 20 streams: every request either settles
exactly once (those on the surviving worker) or has its hold and key lease released by beat's sweeps
once they are HEADROOM_STALE_HOLD_SECONDS old (those on the killed one); nothing is left behind and
the books balance. uvicorn's supervisor replaces the killed worker.
"""

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
from openai import OpenAI

from tests.faults.services import topology_env
from tests.topology.processes import Topology, free_port, wait_for

WORLD = "sigkill"
STREAMS = 20
STALE_S = 5  # HEADROOM_STALE_HOLD_SECONDS here: well beyond any stream of this test (2 s)
PERIODIC_SCALE = "0.005"  # beat's stale-hold release every 3 s (600 s), its lease sweep every 0.3 s (60 s)
SWEEP_S = 3
# README "Faults": released at most the threshold plus one sweep interval after the request began (the
# kill came later), with room for a loaded machine's late beat and worker.
RELEASED_WITHIN_S = STALE_S + SWEEP_S + 10


def _workers(topology: Topology) -> list[psutil.Process]:
    """uvicorn's worker processes (multiprocessing's spawned children of its supervisor), live ones."""
    workers = []
    for process in psutil.Process(topology.children()["web.1"]).children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(process.cmdline()):
                workers.append(process)
        except psutil.Error:
            pass  # gone meanwhile
    return workers


def _client_connections(process: psutil.Process, port: int) -> int:
    return sum(1 for c in process.net_connections("tcp") if c.laddr and c.laddr.port == port
               and c.status == psutil.CONN_ESTABLISHED)


def test_a_gateway_worker_killed_mid_stream_leaves_no_hold_and_settles_nothing_twice(tmp_path, fake, world,
                                                                                     own_redis, books_balanced):
    postgres, data = books_balanced, world
    fake.chunks, fake.chunk_delay = 40, 0.05
    port = free_port()
    env = topology_env(tmp_path, postgres, own_redis, WEB_CONCURRENCY="2",
                       HEADROOM_STALE_HOLD_SECONDS=str(STALE_S), HEADROOM_PERIODIC_SCALE=PERIODIC_SCALE)
    with Topology(env=env, port=port, log=tmp_path / "honcho.log") as topology:
        topology.wait_healthy()
        wait_for(lambda: len(_workers(topology)) == 2, timeout=30, what="two gateway workers")
        streaming = threading.Semaphore(0)

        def stream(_) -> str:
            with OpenAI(api_key=data["api_key"], base_url=f"{topology.url}/v1", max_retries=0, timeout=30) as client:
                try:
                    chunks = client.chat.completions.create(
                        model=data["model"], messages=[{"role": "user", "content": "tell me a story"}], stream=True)
                    next(iter(chunks))
                    streaming.release()
                    for _ in chunks:
                        pass
                    return "completed"
                except Exception:
                    streaming.release()  # a stream cut before its first chunk is cut all the same
                    return "broken"

        with ThreadPoolExecutor(STREAMS) as pool:
            outcomes = pool.map(stream, range(STREAMS))
            for _ in range(STREAMS):
                assert streaming.acquire(timeout=30), "the streams did not start"
            in_flight = postgres.scalar("SELECT count(*) FROM billing_balancehold")
            victim = max(_workers(topology), key=lambda p: _client_connections(p, port))
            cut = _client_connections(victim, port)
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            outcomes = list(outcomes)
        completed, broken = outcomes.count("completed"), outcomes.count("broken")

        wait_for(lambda: postgres.scalar("SELECT count(*) FROM billing_balancehold") == 0
                 and postgres.scalar("SELECT count(*) FROM keys_providerkeylease") == 0,
                 timeout=RELEASED_WITHIN_S, what="beat's sweeps to release the dead worker's holds and leases")
        released_after = time.monotonic() - killed_at
        wait_for(lambda: len(_workers(topology)) == 2 and victim.pid not in {p.pid for p in _workers(topology)},
                 timeout=30, what="uvicorn to replace the killed worker")

    settled = postgres.scalar("SELECT count(*) FROM pool_requestrecord WHERE requester_id = %s",
                              [data["member_id"]])
    distinct = postgres.scalar("SELECT count(DISTINCT request_id) FROM pool_requestrecord WHERE requester_id = %s",
                               [data["member_id"]])
    assert in_flight == STREAMS  # every stream held its funds when the worker died
    assert broken >= 1 and broken == cut, (broken, cut)
    assert settled == distinct == completed, (settled, distinct, completed)  # each settled once, the cut ones not at all
    assert postgres.scalar("SELECT coalesce(sum(held), 0) FROM billing_account") == 0
    print(f"\nSIGKILL mid-stream: {STREAMS} streams over 2 gateway workers; the killed one had {cut}: those {broken}"
          f" voided by the sweep {released_after:.1f} s after the kill (holds older than {STALE_S} s), the other"
          f" {completed} settled once each; 0 holds, 0 leases, ledger_check clean")
