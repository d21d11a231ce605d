"""PostgreSQL restarted under load: while it is down the gateway answers every request with a clean,
OpenAI-style 503 (`database_unavailable`, never a 500, never later than the documented bound), and
once it is back the gateway serves again on fresh connections; no request is settled twice, and
whatever the requests caught by the stop held is released (by their failed settlement or by beat's
sweep), the books balanced.
"""

import time

from tests.faults.load import Load
from tests.faults.services import topology_env
from tests.topology.processes import Topology, free_port, wait_for

WORLD = "pgrestart"
DOWN_S = 2
BOUND_S = 10  # README "Faults": a request meeting a database outage is answered within this
STALE_S = 3


def test_postgres_restarted_under_load_gives_clean_503s_then_serves_and_settles_nothing_twice(
        tmp_path, fake, world, own_redis, books_balanced):
    postgres, data = books_balanced, world
    fake.delay = 0.1  # requests in flight when PostgreSQL stops
    env = topology_env(tmp_path, postgres, own_redis, HEADROOM_STALE_HOLD_SECONDS=str(STALE_S),
                       HEADROOM_PERIODIC_SCALE="0.005")
    with Topology(env=env, port=free_port(), log=tmp_path / "honcho.log") as topology:
        topology.wait_healthy()
        with Load(url=topology.url, api_key=data["api_key"], model=data["model"]) as load:
            wait_for(lambda: load.count() >= 10, timeout=30, what="the load to be served")
            postgres.stop()
            down_at = time.monotonic()
            wait_for(lambda: load.count("503 database_unavailable", since=down_at + 0.5) >= 10, timeout=30,
                     what="503s while PostgreSQL is down")
            time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
            postgres.start()
            up_at = time.monotonic()
            first_ok = wait_for(lambda: min((c.ended for c in load.calls if c.outcome == "ok" and c.started >= up_at),
                                            default=None), timeout=30, what="the gateway to serve again")
            wait_for(lambda: load.count(since=first_ok) >= 20, timeout=30, what="20 requests served after")
        wait_for(lambda: postgres.scalar("SELECT count(*) FROM billing_balancehold") == 0
                 and postgres.scalar("SELECT count(*) FROM keys_providerkeylease") == 0,
                 timeout=STALE_S + 30, what="the holds and leases of the interrupted requests to be released")
    log = topology.log()

    calls = list(load.calls)
    settled, distinct = postgres.sql("SELECT count(*), count(DISTINCT request_id) FROM pool_requestrecord"
                                     " WHERE requester_id = %s", [data["member_id"]])[0]
    served = postgres.scalar("SELECT count(*) FROM pool_requestrecord WHERE requester_id = %s"
                             " AND outcome = 'succeeded'", [data["member_id"]])
    outcomes = {c.outcome for c in calls}
    assert outcomes <= {"ok", "503 database_unavailable"}, (outcomes, log[-3000:])  # no 500, no hang, no reset
    while_down = [c for c in calls if down_at + 0.5 <= c.started and c.ended <= up_at]
    assert while_down and all(c.outcome != "ok" for c in while_down)
    slowest = max(c.seconds for c in calls if c.outcome != "ok")
    assert slowest < BOUND_S, slowest
    after = [c for c in calls if c.started >= first_ok]
    assert after and all(c.outcome == "ok" for c in after), [c.outcome for c in after]
    ok = sum(c.outcome == "ok" for c in calls)
    assert settled == distinct and served == ok, (settled, distinct, served, ok)  # each answered request settled once
    print(f"\nPostgreSQL restarted under load: {len(calls)} requests; PostgreSQL down {up_at - down_at:.1f} s:"
          f" {len(calls) - ok} clean 503s (slowest {slowest:.2f} s, bound {BOUND_S} s), served again"
          f" {first_ok - up_at:.1f} s after it was back, {sum(c.started >= up_at for c in calls)} requests after it,"
          f" {ok} answered and settled once each, 0 settled twice; 0 holds, 0 leases, ledger_check clean")
