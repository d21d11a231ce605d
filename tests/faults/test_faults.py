"""Faults, each with the figure its test prints: a gateway worker SIGKILLed mid-stream, PostgreSQL
restarted under load, Redis stopped under load, a Celery worker killed mid-task. Each runs against the
module's own PostgreSQL and Redis (tests/faults/services.py), never the machine's services.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults.conftest import PLATFORM_SECRET
from tests.faults.services import django_env, manage, shell, sql
from tests.topology.processes import ROOT, Topology, free_port, wait_for

CHAT = {"model": "fakeai/tiny", "messages": [{"role": "user", "content": "hello there world"}]}
STALE_HOLD_SECONDS = 3  # a request's hold and lease older than this belong to a dead process (test value)


class Gateway:
    """One uvicorn process serving the gateway, SIGKILLable."""

    def __init__(self, env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(self.port), "--lifespan", "on",
             "--no-access-log", "--log-level", "warning"], cwd=ROOT, env=env, start_new_session=True,
        )
        wait_for(self._healthy, timeout=60, what="the gateway to start")

    def _healthy(self) -> bool:
        assert self.process.poll() is None, "the gateway exited"
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


def _open(postgres) -> tuple[int, int]:
    return (sql(postgres, "SELECT count(*) FROM billing_balancehold")[0][0],
            sql(postgres, "SELECT count(*) FROM keys_providerkeylease")[0][0])


def test_a_gateway_worker_killed_mid_stream_leaves_nothing_the_sweep_does_not_void(services, fake, tmp_path):
    postgres, redis, world = services
    env = django_env(postgres, redis, HEADROOM_STALE_HOLD_SECONDS=str(STALE_HOLD_SECONDS))
    gateway = Gateway(env)
    fake.script(PLATFORM_SECRET, first_byte_delay=10)  # every stream waits on the provider when the worker dies
    headers = {"Authorization": f"Bearer {world['api_key']}"}

    def stream(_):
        try:
            with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json={**CHAT, "stream": True},
                              headers=headers, timeout=60) as response:
                return response.status_code, b"".join(response.iter_bytes())
        except httpx.HTTPError as error:
            return type(error).__name__, b""

    records_before = sql(postgres, "SELECT count(*) FROM pool_requestrecord")[0][0]
    with ThreadPoolExecutor(20) as clients:
        results = clients.map(stream, range(20))
        wait_for(lambda: _open(postgres) == (20, 20), timeout=30, what="20 streams in flight (20 holds, 20 leases)")
        gateway.kill()
        killed_at = time.monotonic()
        ended = list(results)
    assert all(status != 200 for status, _ in ended), ended  # each client saw its stream die
    # the periodic sweeps, run by a real worker and beat, void the dead requests' holds and leases
    tasks_env = {**env, "HEADROOM_CELERY_EAGER": "false", "HEADROOM_PERIODIC_SCALE": "0.002",
                 "CELERY_BEAT_SCHEDULE_FILE": str(tmp_path / "beat"), "CELERY_LOG_LEVEL": "warning"}
    with Topology(env=tasks_env, port=free_port(), log=tmp_path / "tasks.log", processes=("worker", "beat")) as tasks:
        try:
            wait_for(lambda: _open(postgres) == (0, 0), timeout=STALE_HOLD_SECONDS + 30, what="the sweep to void them")
        except AssertionError:
            print(_open(postgres), tasks.log()[-5000:])
            raise
    voided_in = time.monotonic() - killed_at
    settled = sql(postgres, "SELECT count(*) FROM pool_requestrecord")[0][0] - records_before
    assert settled == 0  # none reached its first byte: nothing to settle, nothing charged
    assert manage(env, "ledger_check").returncode == 0
    print(f"\nSIGKILL mid-stream: 20 streams, 0 settled, 20 holds and 20 leases voided by the sweep"
          f" {voided_in:.1f} s after the kill (holds older than {STALE_HOLD_SECONDS} s here; documented:"
          f" HEADROOM_STALE_HOLD_SECONDS + one sweep interval), ledger clean")


def _load(url: str, api_key: str, phase: list, results: list, stop: threading.Event) -> None:
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {api_key}"}) as client:
        while not stop.is_set():
            began, current = time.monotonic(), phase[0]
            try:
                status = client.post(f"{url}/v1/chat/completions", json=CHAT).status_code
            except httpx.HTTPError as error:
                status = type(error).__name__
            results.append((current, status, time.monotonic() - began))


CLIENTS = 3
DOWN_SECONDS = 3


def _outage_under_load(gateway, world, *, stop, start) -> list:
    """Requests from CLIENTS threads while a server is `stop`ped for DOWN_SECONDS and `start`ed again,
    until answers come back; each result is (phase, status, seconds), phase before, down or back."""
    phase, results, done = ["before"], [], threading.Event()
    threads = [threading.Thread(target=_load, args=(gateway.url, world["api_key"], phase, results, done))
               for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: any(s == 200 for _, s, _ in results), timeout=20, what="the first answers")
        phase[0] = "down"
        stop()
        time.sleep(DOWN_SECONDS)
        phase[0] = "back"
        start()
        wait_for(lambda: any(p == "back" and s == 200 for p, s, _ in results), timeout=30, what="answers again")
        time.sleep(1)
    finally:
        done.set()
        for thread in threads:
            thread.join(60)
    return results


def test_postgresql_restarted_under_load_answers_a_clean_503_and_then_serves_again(services):
    postgres, redis, world = services
    env = django_env(postgres, redis, HEADROOM_GATEWAY_DB_WAIT_SECONDS="2")
    gateway = Gateway(env)
    records_before = sql(postgres, "SELECT count(*) FROM pool_requestrecord")[0][0]
    try:
        results = _outage_under_load(gateway, world, stop=postgres.stop_fast, start=postgres.start_again)
    finally:
        gateway.stop()
    statuses = {status for _, status, _ in results}
    down = [(status, seconds) for p, status, seconds in results if p == "down"]
    answered = sum(1 for _, status, _ in results if status == 200)
    settled = sql(postgres, "SELECT count(*) FROM pool_requestrecord")[0][0] - records_before
    twice = sql(postgres, "SELECT count(*) FROM (SELECT request_id FROM pool_requestrecord GROUP BY 1"
                          " HAVING count(*) > 1) t")[0][0]
    print(f"\nPostgreSQL restarted under load: {len(results)} requests, {answered} answered 200, {settled} settled;"
          f" while down {sum(1 for s, _ in down if s == 503)} × 503 in at most"
          f" {max(seconds for _, seconds in down):.2f} s each; statuses {sorted(map(str, statuses))}")
    assert statuses <= {200, 503}, statuses  # a clean 503, never a 500 nor a dropped connection
    assert any(status == 503 for status, _ in down)
    # Every answer settled, nothing twice. A settlement whose commit the stopping server made but whose
    # acknowledgement it never sent is settled and answered 503 (the gateway cannot know): at most one
    # such request per client in flight at the stop.
    assert twice == 0 and answered <= settled <= answered + CLIENTS
    assert manage(env, "ledger_check").returncode == 0


def test_redis_stopped_under_load_the_gateway_serves_and_celery_recovers(services, fake, tmp_path):
    postgres, redis, world = services
    env = django_env(postgres, redis)
    gateway = Gateway(env)
    tasks_env = {**env, "HEADROOM_CELERY_EAGER": "false", "CELERY_LOG_LEVEL": "warning"}
    with Topology(env=tasks_env, port=free_port(), log=tmp_path / "worker.log", processes=("worker",)):
        try:
            results = _outage_under_load(gateway, world, stop=redis.stop, start=redis.start)
        finally:
            gateway.stop()
        # Celery is back too: a key enrolled now is verified by the same worker through the same Redis
        secret = "sk-fake-after-redis-came-back-xxxxxxxxxxxxxx"
        key_id = shell(tasks_env, ENROL.format(secret=secret))["key_id"]
        wait_for(lambda: sql(postgres, f"SELECT status FROM keys_providerkey WHERE id = {key_id}")[0][0] == "active",
                 timeout=60, what="the worker to verify a key after Redis came back")
    down = [(status, seconds) for p, status, seconds in results if p == "down"]
    print(f"\nRedis stopped under load: {len(down)} requests while it was down, statuses"
          f" {sorted({str(s) for s, _ in down})}, slowest {max(seconds for _, seconds in down):.2f} s;"
          f" the worker verified a key after Redis came back")
    assert down and {status for status, _ in down} <= {200, 503}
    assert manage(env, "ledger_check").returncode == 0


ENROL = """
import json
from keys.models import Provider
from keys.services import provider_key_create
key = provider_key_create(owner=None, provider=Provider.objects.get(slug="fakeai"), secret="{secret}", label="late",
                          actor=None)
print(json.dumps({{"key_id": key.pk}}))
"""


def test_a_celery_worker_killed_mid_task_runs_it_again_and_its_effect_happens_once(services, fake, tmp_path):
    postgres, redis, world = services
    env = django_env(postgres, redis, HEADROOM_CELERY_EAGER="false", HEADROOM_CELERY_VISIBILITY_TIMEOUT="2",
                     CELERY_LOG_LEVEL="warning")
    secret = "sk-fake-slow-to-verify-xxxxxxxxxxxxxxxxxxxxx"
    fake.script(secret, first_byte_delay=8, times=1)  # the first verification hangs on the provider
    with Topology(env=env, port=free_port(), log=tmp_path / "worker-1.log", processes=("worker",)) as first:
        key_id = shell(env, ENROL.format(secret=secret))["key_id"]
        wait_for(lambda: fake.count(secret, "/key") == 1, timeout=30, what="the worker to start verifying")
        killed_at = time.monotonic()
        os.killpg(first.children()["worker.1"], signal.SIGKILL)  # the worker and its pool, mid-task
    time.sleep(2.5)  # the visibility timeout passes with the task unacknowledged
    with Topology(env=env, port=free_port(), log=tmp_path / "worker-2.log", processes=("worker",)):
        wait_for(lambda: sql(postgres, f"SELECT status FROM keys_providerkey WHERE id = {key_id}")[0][0] == "active",
                 timeout=60, what="the task to run again")
        done_in = time.monotonic() - killed_at
    activations = sql(postgres, f"SELECT count(*) FROM keys_providerkeytransition WHERE key_id = {key_id}"
                                f" AND to_status = 'active'")[0][0]
    print(f"\nCelery worker SIGKILLed mid-task: the verification ran again on a new worker {done_in:.1f} s later;"
          f" the provider was asked {fake.count(secret, '/key')} times, the key activated {activations} time")
    assert activations == 1 and fake.count(secret, "/key") == 2
