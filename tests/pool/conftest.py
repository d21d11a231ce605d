"""The gateway under test: Headroom served by uvicorn on loopback, providers played by FakeProvider.

Requests go through real HTTP with the official `openai` SDK. The server runs
in a thread of the test process, so the tests use committed data
(`transactional_db`) and read the ledger directly to check every nanodollar.
"""

import socket
import threading
import time
from dataclasses import dataclass

import pytest
import uvicorn
from openai import OpenAI

from accounts.services import api_key_create
from core.money import parse_usd
from keys.models import Provider, ProviderKey, ProviderModel
from keys.services import provider_key_create
from tests.accounts.factories import UserFactory
from tests.fakeprovider import FakeProvider

PROVIDER = "fakeai"
MODEL = "tiny"
INPUT_PRICE = parse_usd("1")  # $1 per 1M input tokens: 1,000 nanodollars a token
OUTPUT_PRICE = parse_usd("2")  # $2 per 1M output tokens: 2,000 nanodollars a token
PROMPT = [{"role": "user", "content": "hello there world"}]  # the fake counts 3 prompt tokens
PROMPT_TOKENS = 3
COMPLETION_TOKENS = 20  # the fake's default: 20 content chunks, one token each
COST = PROMPT_TOKENS * 1_000 + COMPLETION_TOKENS * 2_000  # 43,000 nanodollars


@pytest.fixture(scope="session")
def fake():
    with FakeProvider() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(request):
    if "fake" in request.fixturenames:
        request.getfixturevalue("fake").reset()
    yield


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def gateway_server(django_db_setup, django_db_blocker):
    port = _free_port()
    config = uvicorn.Config(
        "config.asgi:application", host="127.0.0.1", port=port, lifespan="on", log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    with django_db_blocker.unblock():
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Member:
    user: object
    api_key: str

    def client(self, base_url: str, **kwargs) -> OpenAI:
        return OpenAI(api_key=self.api_key, base_url=f"{base_url}/v1", max_retries=0, **kwargs)


class World:
    """Builds members, providers and keys the way the product does (services, verification on the fake)."""

    def __init__(self, fake: FakeProvider, gateway_url: str):
        self.fake = fake
        self.url = gateway_url
        self._n = 0
        self.provider = Provider.objects.create(
            slug=PROVIDER,
            name="Fake AI",
            base_url=f"{fake.url}/v1",
            balance_api=Provider.BalanceApi.OPENROUTER,
            exchange_supported=True,
            pool_clearance=Provider.PoolClearance.CLEARED,
        )
        ProviderModel.objects.create(
            provider=self.provider, name=MODEL, input_price=INPUT_PRICE, output_price=OUTPUT_PRICE
        )

    def member(self, **api_key_options) -> Member:
        user = UserFactory()
        _, raw = api_key_create(user=user, name="test", **api_key_options)
        return Member(user=user, api_key=raw)

    def key(self, owner=None, **flags) -> ProviderKey:
        """An ACTIVE key (verified against the fake provider); owner None is a platform key."""
        self._n += 1
        secret = f"sk-fake-{self._n:04d}-{'x' * 24}"
        key = provider_key_create(
            owner=owner, provider=self.provider, secret=secret, label=f"k{self._n}",
            consent=flags.get("donate_to_pool", False), actor=owner if owner is not None else None, **flags,
        )
        key.refresh_from_db()
        assert key.status == ProviderKey.Status.ACTIVE, (key.status, key.last_error)
        key.secret = secret  # for scripting the fake; never stored
        return key


@pytest.fixture
def world(transactional_db, fake, gateway_server) -> World:
    from django.core.cache import cache

    cache.clear()  # the gateway's own rate-limit windows
    return World(fake, gateway_server)
