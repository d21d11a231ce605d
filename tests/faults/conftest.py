import pytest

from tests.fakeprovider import FakeProvider
from tests.faults.services import OwnPostgres, OwnRedis, django_env, manage, shell

PLATFORM_SECRET = "sk-fake-platform-fault-xxxxxxxxxxxxxxxxxxxxxxxx"
SEED = """
import json
from accounts.services import api_key_create, user_create
from core.money import parse_usd
from keys.models import Provider, ProviderModel
from keys.services import provider_key_create
provider = Provider.objects.create(slug="fakeai", name="Fake AI", base_url="{url}/v1", balance_api="openrouter",
                                   pool_clearance="cleared")
ProviderModel.objects.create(provider=provider, name="tiny", input_price=parse_usd("1"), output_price=parse_usd("2"))
key = provider_key_create(owner=None, provider=provider, secret="{secret}", label="platform", actor=None)
member = user_create(email="payer@example.com", verified=True)
print(json.dumps({{"api_key": api_key_create(user=member, name="sdk")[1], "key_id": key.pk}}))
"""


@pytest.fixture(scope="module")
def fake():
    with FakeProvider() as server:
        yield server


@pytest.fixture(scope="module")
def services(tmp_path_factory, fake):
    """The module's own PostgreSQL (migrated, with a provider, a platform key and a paying member) and Redis."""
    postgres, redis = OwnPostgres(tmp_path_factory.mktemp("faults") / "pgdata"), OwnRedis()
    try:
        postgres.start()
        redis.start()
        env = django_env(postgres, redis)
        manage(env, "migrate", "--no-input")
        world = shell(env, SEED.format(url=fake.url, secret=PLATFORM_SECRET))
        yield postgres, redis, world
    finally:
        redis.close()
        postgres.close()


@pytest.fixture(autouse=True)
def _fresh_fake(fake):
    fake.reset()
