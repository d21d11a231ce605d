"""The production topology, as the README's "Production" section starts it: `honcho start` on the
Procfile — two uvicorn gateway workers, one Celery worker, one beat — on PostgreSQL and Redis
(`.ci/run`: the machine's servers; `make test`: the embedded PostgreSQL and a private Redis)."""

import httpx
import psutil
import pytest
from django.core.management import call_command

from billing.models import BalanceHold
from keys.models import ProviderKey, ProviderKeyLease
from tests.topology.conftest import MODEL, PROMPT, PROVIDER, Member, catalogue, pause_by_429s_and_see_it_resume
from tests.topology.processes import start_production, wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.redis]  # the production topology needs REDIS_URL

POOL_MODEL = f"{PROVIDER}-pool/{MODEL}"
MAX_REQUESTS = 240  # enough fresh connections for the kernel to hand some to each worker


def _gateway_workers(server) -> set[int]:
    """Pids of the uvicorn worker processes (children of uvicorn's supervisor)."""
    return {p.pid for p in server.descendants()
            if any("uvicorn" in part for part in (_cmdline(p.parent()) or []))}


def _cmdline(process) -> list[str] | None:
    try:
        return process.cmdline() if process else None
    except psutil.Error:
        return None


def _workers_that_counted_requests(server, metrics_dir) -> set[int]:
    # prometheus_client's multiprocess mode writes counter_<pid>.db once that worker counts a request.
    counted = {int(path.stem.split("_")[-1]) for path in metrics_dir.glob("counter_*.db")}
    return counted & _gateway_workers(server)


def _expected_lru_picks(requesters: list[Member], owner_of: dict[str, int], order: dict[str, tuple]) -> list[str]:
    """The key strict LRU must pick for each request in turn: among the pool keys not the requester's,
    the least recently used, by (lru_seq, id) as the gateway orders them."""
    order = dict(order)
    picks = []
    for n, requester in enumerate(requesters):
        candidates = [secret for secret, owner in owner_of.items() if owner != requester.user.pk]
        chosen = min(candidates, key=lambda secret: order[secret])
        order[chosen] = (float("inf"), n)  # used last: behind every key used before it
        picks.append(chosen)
    return picks


def test_the_production_topology_verifies_shares_fairly_resumes_and_settles(transactional_db, fake, tmp_path):
    with start_production(tmp_path, web_workers=2) as server:
        server.wait_ready()
        catalogue(fake)

        # A key added through the API is verified by the worker: PENDING, then ACTIVE.
        donors = [Member.sign_up(server.url) for _ in range(3)]
        secrets = {}
        for n, donor in enumerate(donors):
            secret = f"sk-fake-donor{n}-" + "x" * 24
            created = donor.add_key(secret, byok=False, donate_to_pool=True, consent=True)
            secrets[secret] = (donor, created["id"])
        for secret, (donor, key_id) in secrets.items():
            verified = donor.wait_for_status(key_id, "active")
            moves = [(m["from_status"], m["to_status"]) for m in verified["history"]]
            assert moves[0][1] == "pending" and moves[-1] == ("pending", "active"), moves

        # Sequential pool requests from the three donors in turn, each on a fresh connection so the
        # kernel spreads them over both gateway workers, until each worker has served some.
        before = {secret: tuple(ProviderKey.objects.values_list("lru_seq", "id").get(pk=key_id))
                  for secret, (_, key_id) in secrets.items()}
        owner_of = {secret: donor.user.pk for secret, (donor, _) in secrets.items()}
        fake.reset()  # from here on its log is the pool's traffic alone
        requesters: list[Member] = []
        metrics_dir = tmp_path / "prometheus"
        fresh = httpx.Limits(max_keepalive_connections=0)

        def one_round() -> bool:
            for donor in donors:
                with httpx.Client(limits=fresh, timeout=60) as http:
                    answer = donor.client(http_client=http).chat.completions.create(model=POOL_MODEL, messages=PROMPT)
                assert answer.choices[0].message.content
                requesters.append(donor)
            return len(requesters) >= 24 and len(_workers_that_counted_requests(server, metrics_dir)) >= 2

        wait_until(lambda: one_round() or len(requesters) >= MAX_REQUESTS, timeout=240,
                   what="requests served by both gateway workers", every=0)
        assert len(_workers_that_counted_requests(server, metrics_dir)) == 2, "one worker served every request"

        served = [r.key for r in fake.requests if r.path.endswith("/chat/completions")]
        assert len(served) == len(requesters)  # one upstream call per request, none retried
        for requester, secret in zip(requesters, served):
            assert owner_of[secret] != requester.user.pk  # never self-served
        assert served == _expected_lru_picks(requesters, owner_of, before)  # strictly least recently used

        # A key paused by 429s is resumed by beat after its Retry-After, with no one acting.
        byok = Member.sign_up(server.url, byok_fallback=False)
        byok_secret = "sk-fake-byok-" + "x" * 24
        byok_key = byok.add_key(byok_secret, byok=True)["id"]
        byok.wait_for_status(byok_key, "active")
        pause_by_429s_and_see_it_resume(byok, key_id=byok_key, secret=byok_secret, fake=fake)

        # A supervisor's SIGTERM to honcho stops every process, the gateway's workers included.
        assert server.stop() == []

    # The ledger checks clean, and every request closed its hold and its key lease.
    call_command("ledger_check")
    assert not BalanceHold.objects.exists()
    assert not ProviderKeyLease.objects.exists()
