"""A Celery worker killed (SIGKILL, its whole process group) in the middle of a task: the task was
not acknowledged (acks_late), so Redis hands it out again once HEADROOM_CELERY_VISIBILITY_TIMEOUT has
passed, and the next worker runs it again; its effect happens once. The task here is the
verification of a key added through the management API: killed while it waits on the provider's
balance API, it runs again, and the key has exactly one transition to ACTIVE.
"""

import os
import signal
import time

import httpx

from tests.faults.services import topology_env
from tests.topology.processes import Topology, free_port, wait_for

WORLD = "celerykill"
VISIBILITY_TIMEOUT_S = 2


def test_a_celery_worker_killed_mid_task_the_task_runs_again_and_its_effect_happens_once(tmp_path, fake, world,
                                                                                        own_redis, books_balanced):
    postgres, data = books_balanced, world
    env = topology_env(tmp_path, postgres, own_redis, HEADROOM_CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT_S))
    secret = f"sk-fake-celerykill-{'k' * 24}"
    fake.script(secret, first_byte_delay=8, times=1)  # the first verification waits on the provider
    (tmp_path / "web").mkdir()
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with Topology(env=env, port=free_port(), log=tmp_path / "web" / "honcho.log", processes=("web",)) as web:
        with Topology(env=env, port=free_port(), log=tmp_path / "first" / "honcho.log",
                      processes=("worker",)) as first:
            web.wait_healthy()
            api = httpx.Client(base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {data['api_key']}"})
            added = api.post("/keys", json={"provider": data["provider"], "secret": secret, "byok": True})
            assert added.status_code == 201, added.text
            key_id = added.json()["id"]
            wait_for(lambda: fake.count(secret) >= 1, timeout=60, what="the worker to start verifying the key")
            os.killpg(first.children()["worker.1"], signal.SIGKILL)  # the worker and its pool, mid-task
            killed_at = time.monotonic()
            assert api.get(f"/keys/{key_id}").json()["status"] == "pending"
        with Topology(env=env, port=free_port(), log=tmp_path / "second" / "honcho.log", processes=("worker",)):
            wait_for(lambda: api.get(f"/keys/{key_id}").json()["status"] == "active", timeout=VISIBILITY_TIMEOUT_S + 60,
                     what="the next worker to run the verification again")
            ran_again_after = time.monotonic() - killed_at
        api.close()
    asked = fake.count(secret)
    transitions = postgres.sql("SELECT from_status, to_status FROM keys_providerkeytransition WHERE key_id = %s",
                               [key_id])
    assert asked >= 2  # the provider was asked again: the task ran a second time
    assert [t for t in transitions if t[1] == "active"] == [("pending", "active")], transitions
    print(f"\nCelery worker killed mid-task: the key's verification, killed while waiting on the provider, ran again"
          f" on the next worker {ran_again_after:.1f} s after the kill (visibility timeout {VISIBILITY_TIMEOUT_S} s);"
          f" the provider was asked {asked} times, the key has 1 transition PENDING → ACTIVE")
