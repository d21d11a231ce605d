"""`make run` runs the periodic work too: its server, started as a newcomer starts it, resumes a key
paused by 429s and finishes draining a removed key, with no manual step.

`make run` here is the real target, on the test database (DATABASE_URL names it, so no embedded
PostgreSQL starts) and with its own private Redis, as on a fresh machine; its development secrets go
to a file of the test's own (DJANGO_ENV_FILE), never the checkout's `.env`. Everything secret goes
through the served API, which encrypts with those secrets. The beat's intervals are scaled down
(HEADROOM_PERIODIC_SCALE) so that the periodic work happens within the test.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import APIStatusError, OpenAI

from accounts.services import api_key_create
from core.money import parse_usd
from keys.models import Provider, ProviderKey, ProviderKeyLease, ProviderKeyTransition, ProviderModel
from keys.services.provider_keys import REASON_DRAINED
from tests.accounts.factories import UserFactory
from tests.fakeprovider import FakeProvider
from tests.topology.processes import MakeRun, database_url_for_subprocesses, free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

PROVIDER, MODEL = "fakeai", "tiny"


def _status(api: httpx.Client, key_id: int) -> str:
    return api.get(f"/keys/{key_id}").json()["status"]


def test_make_run_resumes_paused_keys_and_drains_removed_ones_on_its_own(tmp_path):
    with FakeProvider() as fake:
        provider = Provider.objects.create(
            slug=PROVIDER, name="Fake AI", base_url=f"{fake.url}/v1", balance_api=Provider.BalanceApi.OPENROUTER,
            pool_clearance=Provider.PoolClearance.CLEARED,
        )
        ProviderModel.objects.create(provider=provider, name=MODEL, input_price=parse_usd("1"), output_price=parse_usd("2"))
        member = UserFactory()
        _, raw = api_key_create(user=member, name="sdk", scopes=["gateway", "read", "keys"], byok_fallback=False)
        env = {"DATABASE_URL": database_url_for_subprocesses(), "REDIS_URL": "", "DJANGO_ENV_FILE": str(tmp_path / ".env"),
               "HEADROOM_PERIODIC_SCALE": "0.05", "CELERY_BEAT_SCHEDULE_FILE": str(tmp_path / "beat-schedule")}
        began = time.monotonic()
        with MakeRun(env=env, port=free_port(), log=tmp_path / "make-run.log") as server:
            server.wait_healthy(timeout=120)
            up = time.monotonic() - began
            api = httpx.Client(base_url=f"{server.url}/api/v1", headers={"Authorization": f"Bearer {raw}"})
            client = OpenAI(api_key=raw, base_url=f"{server.url}/v1", max_retries=0)
            chat = {"model": f"{PROVIDER}/{MODEL}", "messages": [{"role": "user", "content": "hello there world"}]}

            # a BYOK key, added through the API and verified by make run's worker
            secrets = {name: f"sk-fake-{name}-{'z' * 24}" for name in ("paused", "removed")}
            keys = {name: api.post("/keys", json={"provider": PROVIDER, "secret": secret}).json()["id"]
                    for name, secret in secrets.items()}
            for key_id in keys.values():
                wait_for(lambda key_id=key_id: _status(api, key_id) == "active", timeout=30, what="verification")
            api.post(f"/keys/{keys['removed']}/deactivate")  # one BYOK key serves at a time: the other

            # paused by three 429s with a Retry-After of a second, then resumed by beat's probe
            fake.script(secrets["paused"], retry_after=1, times=3)
            for _ in range(3):
                with pytest.raises(APIStatusError):
                    client.chat.completions.create(**chat)
            assert _status(api, keys["paused"]) == "paused"
            began = time.monotonic()
            wait_for(lambda: _status(api, keys["paused"]) == "active", timeout=30, what="the paused key to resume")
            resumed_in = time.monotonic() - began

            # removed while a request is in flight: DISABLING until the request ends, then drained by the sweep
            fake.script(secrets["paused"], first_byte_delay=2, times=1)
            with ThreadPoolExecutor(1) as background:
                in_flight = background.submit(lambda: "".join(
                    chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(**chat, stream=True)
                    if chunk.choices
                ))
                wait_for(lambda: ProviderKeyLease.objects.filter(key_id=keys["paused"]).exists(), timeout=10,
                         what="the request to take the key", interval=0.05)
                assert api.delete(f"/keys/{keys['paused']}").status_code == 202
                assert ProviderKey.objects.get(pk=keys["paused"]).status == ProviderKey.Status.DISABLING
                assert in_flight.result(timeout=30)  # the request in flight is served to its end
            began = time.monotonic()
            wait_for(lambda: ProviderKey.objects.get(pk=keys["paused"]).status == ProviderKey.Status.INACTIVE,
                     timeout=30, what="the removed key to finish draining")
            drained_in = time.monotonic() - began
            assert ProviderKeyTransition.objects.filter(key_id=keys["paused"], reason=REASON_DRAINED).exists()
            assert ProviderKeyTransition.objects.filter(key_id=keys["paused"], reason="probe succeeded").exists()

        print(f"\nmake run: serving in {up:.1f} s; a key paused by 429s resumed by its beat in {resumed_in:.1f} s; a key"
              f" removed mid-request drained by its sweep {drained_in:.1f} s after the request ended")
