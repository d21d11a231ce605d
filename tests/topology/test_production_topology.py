"""The production topology end to end: the Procfile under honcho — two gateway workers on one port, one
Celery worker, beat — against the test database and Redis, driven through the management API and the
official `openai` SDK, as the README's production section runs it.

The settings are the tests' (throwaway secrets, the fake provider on loopback allowed: production
settings refuse loopback upstreams) with Celery for real (HEADROOM_CELERY_EAGER=false) and the beat's
intervals scaled down (HEADROOM_PERIODIC_SCALE), so that periodic work happens within the test.
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from django.core.management import call_command
from openai import OpenAI

from accounts.services import api_key_create
from billing.models import BalanceHold
from core.money import parse_usd
from keys.models import Provider, ProviderKey, ProviderKeyTransition, ProviderKeyLease, ProviderModel
from keys.services import provider_key_create
from tests.accounts.factories import UserFactory
from tests.fakeprovider import FakeProvider
from tests.keys.factories import verify_email
from tests.topology.processes import Topology, free_port, database_url_for_subprocesses, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

PROVIDER, MODEL = "fakeai", "tiny"
CHAT = "/chat/completions"  # what the fake counts as served (verification reads the balance API)
DONORS = 3
ROUNDS = 8  # pool requests per donor key: strict LRU gives each exactly this many
PERIODIC_SCALE = "0.05"  # beat's 60 s sweeps every 3 s


def _redis_url() -> str:
    """REDIS_URL as the run was given it, emptied: no task left over from an earlier test reaches this
    worker. Only that database is the run's own (`make test`'s private server, `.ci/run`'s db 15):
    another fixed number on a shared server would be emptied under a second run going at once."""
    url = os.environ["REDIS_URL"]
    redis.Redis.from_url(url).flushdb()
    return url


def _member(**api_key_options):
    user = UserFactory()
    verify_email(user)
    return user, api_key_create(user=user, name="sdk", **api_key_options)[1]


def _donated_key(provider, owner, n: int) -> tuple[ProviderKey, str]:
    secret = f"sk-fake-donor-{n:02d}-{'x' * 24}"
    key = provider_key_create(owner=owner, provider=provider, secret=secret, label=f"donor {n}", byok=False,
                              donate_to_pool=True, consent=True, actor=owner)
    key.refresh_from_db()
    assert key.status == ProviderKey.Status.ACTIVE, key.last_error
    return key, secret


def test_the_procfile_serves_verifies_rotates_fairly_and_resumes_paused_keys(tmp_path):
    with FakeProvider() as fake:
        provider = Provider.objects.create(
            slug=PROVIDER, name="Fake AI", base_url=f"{fake.url}/v1", balance_api=Provider.BalanceApi.OPENROUTER,
            exchange_supported=True, pool_clearance=Provider.PoolClearance.CLEARED,
        )
        ProviderModel.objects.create(provider=provider, name=MODEL, input_price=parse_usd("1"), output_price=parse_usd("2"))
        donors = [_donated_key(provider, _member()[0], n) for n in range(DONORS)]
        alice, alice_api_key = _member(scopes=["gateway", "read", "keys"])
        metrics_dir = tmp_path / "prometheus"
        metrics_dir.mkdir()
        env = {
            "DJANGO_SETTINGS_MODULE": "config.settings.test", "HEADROOM_CELERY_EAGER": "false",
            "DATABASE_URL": database_url_for_subprocesses(), "REDIS_URL": _redis_url(), "DJANGO_ENV_FILE": str(tmp_path / "no.env"),
            "WEB_CONCURRENCY": "2", "CELERY_CONCURRENCY": "2", "HEADROOM_PERIODIC_SCALE": PERIODIC_SCALE,
            "CELERY_BEAT_SCHEDULE_FILE": str(tmp_path / "beat-schedule"), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "CELERY_LOG_LEVEL": "warning",
        }
        began = time.monotonic()
        with Topology(env=env, port=free_port(), log=tmp_path / "honcho.log") as topology:
            topology.wait_healthy()
            up = time.monotonic() - began
            assert {"web.1", "worker.1", "beat.1"} <= topology.children().keys()
            api = httpx.Client(base_url=f"{topology.url}/api/v1", headers={"Authorization": f"Bearer {alice_api_key}"})

            # a key added through the API is verified by the worker: PENDING, then ACTIVE
            secret = f"sk-fake-alice-{'y' * 24}"
            added = api.post("/keys", json={"provider": PROVIDER, "secret": secret, "byok": False,
                                            "donate_to_pool": True, "consent": True})
            assert added.status_code == 201, added.text
            assert added.json()["status"] == ProviderKey.Status.PENDING
            began = time.monotonic()
            wait_for(lambda: api.get(f"/keys/{added.json()['id']}").json()["status"] == ProviderKey.Status.ACTIVE,
                     timeout=30, what="the worker to verify the key")
            verified_in = time.monotonic() - began

            # pool requests spread over both gateway workers take the donors' keys in strict rotation,
            # never alice's own
            def ask(_):
                with OpenAI(api_key=alice_api_key, base_url=f"{topology.url}/v1", max_retries=0) as client:
                    return client.chat.completions.create(
                        model=f"{PROVIDER}-pool/{MODEL}", messages=[{"role": "user", "content": "hello there world"}]
                    ).choices[0].message.content

            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(ask, range(DONORS * ROUNDS)))
            assert all(answers)
            served = [fake.count(donor_secret, CHAT) for _, donor_secret in donors]
            workers = {path.name.rsplit("_", 1)[-1] for path in metrics_dir.glob("counter_*.db")}
            assert served == [ROUNDS] * DONORS, served
            assert fake.count(secret, CHAT) == 0  # alice's own key never serves alice
            assert len(workers) >= 2, workers

            # one request at a time, each takes the key used longest ago: the rotation's exact order
            # (by lru_seq, then id, as the pick orders), not only its counts
            fake.reset()
            rotation = [secret for _, secret in sorted(
                (ProviderKey.objects.values_list("lru_seq", "id").get(pk=key.pk), secret) for key, secret in donors)]
            for n in range(2 * DONORS):
                ask(n)
            assert [r.key for r in fake.requests if r.path.endswith(CHAT)] == rotation * 2

            # a key paused by 429s is resumed by beat once its Retry-After has passed
            paused_key, paused_secret = donors[0]
            fake.script(paused_secret, retry_after=1, times=3)
            for _ in range(3 * (DONORS + 1)):
                ask(None)
                paused_key.refresh_from_db()
                if paused_key.status == ProviderKey.Status.PAUSED:
                    break
            assert paused_key.status == ProviderKey.Status.PAUSED
            began = time.monotonic()
            wait_for(lambda: ProviderKey.objects.get(pk=paused_key.pk).status == ProviderKey.Status.ACTIVE,
                     timeout=30, what="beat to resume the paused key")
            resumed_in = time.monotonic() - began
            assert ProviderKeyTransition.objects.filter(key=paused_key, to_status=ProviderKey.Status.ACTIVE,
                                                   reason="probe succeeded").exists()  # beat's probe, no one else

        print(f"\nproduction topology: up in {up:.1f} s; a key added through the API verified by the worker in"
              f" {verified_in:.1f} s; {DONORS * ROUNDS} pool requests over {len(workers)} gateway workers: {served}"
              f" per donor key, 0 on the requester's own; a key paused by 429s resumed by beat in {resumed_in:.1f} s")
    assert not BalanceHold.objects.exists() and not ProviderKeyLease.objects.exists()
    call_command("ledger_check")
