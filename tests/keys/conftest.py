"""Fixtures for the keys tests: one fake provider server per session, reset around each test, and
providers whose base URLs point at it (test settings allow private upstreams)."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from keys.models import Provider
from tests.accounts.factories import UserFactory
from tests.fakeprovider import FakeProvider
from tests.keys.factories import ProviderFactory, verify_email

BALANCE_KINDS = ["deepseek", "openrouter", "moonshot", "siliconflow"]


@pytest.fixture(scope="session")
def fake_server():
    with FakeProvider() as server:
        yield server


@pytest.fixture
def fake(fake_server):
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture
def make_provider(fake, db):
    """A provider on the fake server: `make_provider("deepseek")` has that balance API."""

    def make(balance_api: str = "none", **fields) -> Provider:
        fields.setdefault("slug", f"fake-{balance_api}")
        fields.setdefault("base_url", f"{fake.url}/v1")
        return ProviderFactory(balance_api=balance_api, **fields)

    return make


@pytest.fixture
def provider(make_provider) -> Provider:
    return make_provider("none")


@pytest.fixture
def dead_url() -> str:
    """A loopback URL where nothing listens: the provider is down."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def member(db):
    """A member with a verified e-mail (donating needs one)."""
    user = UserFactory()
    verify_email(user)
    return user


@pytest.fixture
def api(member) -> APIClient:
    client = APIClient()
    client.force_authenticate(user=member)
    return client


@pytest.fixture
def operator(db):
    from accounts.models import User

    return User.objects.create_superuser(email="ops@example.com", password="pw-ops-1234")


@pytest.fixture
def admin_client(operator) -> Client:
    """Overrides pytest-django's admin_client: an operator signed in to the Django admin."""
    client = Client()
    client.force_login(operator)
    return client
