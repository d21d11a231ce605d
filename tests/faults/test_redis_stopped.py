"""Redis stopped under load: the gateway keeps serving (its rate limit fails open, Redis is on no
other part of its path), and once Redis is back Celery recovers on its own: a key added through the
management API is verified by the worker, which reconnected to the broker without being restarted.
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
    env = topology_env(tmp_path, postgres, own_redis)
    with Topology(env=env, port=free_port(), log=tmp_path / "honcho.log", processes=("web", "worker")) as topology:
        topology.wait_healthy()
        api = httpx.Client(base_url=f"{topology.url}/api/v1", headers={"Authorization": f"Bearer {data['api_key']}"})
        with Load(url=topology.url, api_key=data["api_key"], model=data["model"]) as load:
            wait_for(lambda: load.count() >= 10, timeout=30, what="the load to be served")
            own_redis.stop()
            down_at = time.monotonic()
            time.sleep(DOWN_S)
            own_redis.start()
            up_at = time.monotonic()
            while_down = [c for c in load.calls if down_at <= c.started and c.ended <= up_at]

            # Celery, reconnected: the worker verifies a key added now
            added = api.post("/keys", json={"provider": data["provider"], "secret": f"sk-fake-redis-{'z' * 24}",
                                            "byok": True})
            assert added.status_code == 201, added.text
            wait_for(lambda: api.get(f"/keys/{added.json()['id']}").json()["status"] == "active", timeout=60,
                     what="the Celery worker to verify a key after Redis came back")
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
          f" served (slowest {slowest:.2f} s), {len(calls)} in all, none failed; once it was back, a key added"
          f" through the API was verified by the same Celery worker {verified_after:.1f} s later")
