"""Redis stopped under load: the gateway keeps serving (its rate limit fails open, Redis is on no
other part of its path), and so does the management API (its throttles fail open too; a key added
meanwhile is saved PENDING, its verification left to beat's sweep). Once Redis is back Celery recovers
on its own: beat's sweep enqueues that verification and the worker, which reconnected without being
restarted, runs it.
"""

import time

import httpx

from tests.faults.load import Load
from tests.faults.services import topology_env
from tests.topology.processes import Topology, free_port, wait_for

WORLD = "redisdown"
DOWN_S = 2


def test_redis_stopped_under_load_the_gateway_serves_and_celery_recovers(tmp_path, fake, world, own_redis,
                                                                         books_balanced):
    postgres, data = books_balanced, world
    fake.delay = 0.05
    # beat's key sweep every 1.2 s (60 s), verifying again the PENDING keys older than 1 s (600 s)
    env = topology_env(tmp_path, postgres, own_redis, HEADROOM_PERIODIC_SCALE="0.02",
                       HEADROOM_PENDING_RECHECK_AFTER="1")
    with Topology(env=env, port=free_port(), log=tmp_path / "honcho.log") as topology:
        topology.wait_healthy()
        api = httpx.Client(base_url=f"{topology.url}/api/v1", headers={"Authorization": f"Bearer {data['api_key']}"})
        with Load(url=topology.url, api_key=data["api_key"], model=data["model"]) as load:
            wait_for(lambda: load.count() >= 10, timeout=30, what="the load to be served")
            own_redis.stop()
            down_at = time.monotonic()
            listed = api.get("/keys")
            added = api.post("/keys", json={"provider": data["provider"], "secret": f"sk-fake-redis-{'z' * 24}",
                                            "byok": True})
            api_answered_in = time.monotonic() - down_at
            time.sleep(max(0.0, DOWN_S - api_answered_in))
            own_redis.start()
            up_at = time.monotonic()
            while_down = [c for c in load.calls if down_at <= c.started and c.ended <= up_at]
            assert listed.status_code == 200, listed.text
            assert added.status_code == 201 and added.json()["status"] == "pending", added.text

            # Celery, reconnected: beat's sweep enqueues the verification the API could not, the worker runs it
            wait_for(lambda: api.get(f"/keys/{added.json()['id']}").json()["status"] == "active", timeout=60,
                     what="the key added while Redis was down to be verified once it was back")
            verified_after = time.monotonic() - up_at
        assert topology.process.poll() is None  # honcho still runs: no process of it died meanwhile
        api.close()
    calls = list(load.calls)
    transitions = postgres.scalar("SELECT count(*) FROM keys_providerkeytransition WHERE key_id = %s"
                                  " AND to_status = 'active'", [added.json()["id"]])
    assert while_down and all(c.outcome == "ok" for c in while_down), {c.outcome for c in while_down}
    assert all(c.outcome == "ok" for c in calls), {c.outcome for c in calls}
    assert transitions == 1
    slowest = max(c.seconds for c in while_down)
    print(f"\nRedis stopped under load: {len(while_down)} requests in the {up_at - down_at:.1f} s it was down, all"
          f" served (slowest {slowest:.2f} s), {len(calls)} in all, none failed; the management API listed and added"
          f" a key meanwhile ({api_answered_in:.2f} s for both); once Redis was back, beat and the same Celery worker"
          f" verified that key {verified_after:.1f} s later (1 transition to ACTIVE)")
