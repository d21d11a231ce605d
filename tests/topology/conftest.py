"""Headroom's own processes (tests/topology/processes.py) against a fake provider on loopback.

The test process only lays out the catalogue and the members (as an operator and sign-ups would);
everything else goes through the public surface of the launched servers: provider keys through the
management API, completions through the official `openai` SDK.
"""

from dataclasses import dataclass

import httpx
import openai
import pytest
from openai import OpenAI

from accounts.models import ApiKeyScope
from accounts.services import api_key_create
from core.money import parse_usd
from keys.models import Provider, ProviderModel
from tests.accounts.factories import UserFactory
from tests.fakeprovider import FakeProvider
from tests.topology.processes import wait_until

PROVIDER = "fakeai"
MODEL = "tiny"
PROMPT = [{"role": "user", "content": "hello there world"}]
VERIFY_TIMEOUT_S = 60.0  # a worker verifies a key in well under a second; two shared CPUs may be busy


@pytest.fixture
def fake():
    with FakeProvider() as server:
        yield server


def catalogue(fake: FakeProvider) -> Provider:
    """A provider on the fake, cleared for the pool, with one priced model (an operator's admin work)."""
    provider = Provider.objects.create(
        slug=PROVIDER, name="Fake AI", base_url=f"{fake.url}/v1", balance_api=Provider.BalanceApi.OPENROUTER,
        exchange_supported=True, pool_clearance=Provider.PoolClearance.CLEARED,
    )
    ProviderModel.objects.create(provider=provider, name=MODEL, input_price=parse_usd("1"), output_price=parse_usd("2"))
    return provider


@dataclass
class Member:
    """A signed-up member holding one API key that may call /v1 and manage their provider keys."""

    user: object
    api_key: str
    url: str

    @classmethod
    def sign_up(cls, url: str, **api_key_options) -> "Member":
        user = UserFactory()
        scopes = [ApiKeyScope.GATEWAY, ApiKeyScope.READ, ApiKeyScope.KEYS]
        _, raw = api_key_create(user=user, name="topology", scopes=scopes, **api_key_options)
        return cls(user=user, api_key=raw, url=url)

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.request(method, f"{self.url}/api/v1/{path}", headers=headers, timeout=30, **kwargs)

    def add_key(self, secret: str, **uses) -> dict:
        response = self.api("POST", "keys", json={"provider": PROVIDER, "secret": secret, **uses})
        assert response.status_code == 201, response.text
        return response.json()

    def key(self, key_id: int) -> dict:
        response = self.api("GET", f"keys/{key_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for_status(self, key_id: int, status: str, *, timeout: float = VERIFY_TIMEOUT_S) -> dict:
        return wait_until(lambda: (k := self.key(key_id))["status"] == status and k,
                          timeout=timeout, what=f"key {key_id} to become {status}")

    def client(self, **kwargs) -> OpenAI:
        return OpenAI(api_key=self.api_key, base_url=f"{self.url}/v1", max_retries=0, timeout=60, **kwargs)


def pause_by_429s_and_see_it_resume(member: Member, *, key_id: int, secret: str, fake: FakeProvider) -> None:
    """Three upstream 429s saying "retry in 2 s" pause the member's BYOK key on the request path; then,
    with nobody touching it, beat's probe (run by the worker) resumes it and it serves again."""
    client = member.client()
    fake.script(secret, retry_after=2, times=3)
    for _ in range(3):
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=f"{PROVIDER}/{MODEL}", messages=PROMPT)
    paused = member.key(key_id)
    assert paused["status"] == "paused" and paused["retry_after_until"], paused

    resumed = member.wait_for_status(key_id, "active")
    last = resumed["history"][-1]
    assert (last["from_status"], last["to_status"], last["reason"]) == ("paused", "active", "probe succeeded")
    assert client.chat.completions.create(model=f"{PROVIDER}/{MODEL}", messages=PROMPT).choices
