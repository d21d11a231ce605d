"""One PostgreSQL and one Redis of the fault tests' own for the session (tests/faults/services.py),
migrated once; each test's topology runs against them and may stop them."""

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.fakeprovider import FakeProvider
from tests.faults.services import OwnPostgres, OwnRedis, manage, seed

# Each test's provider, keys and member (tests/faults/seed.py), seeded together: one Django start.
WORLDS = {"sigkill": {"platform_keys": 3}, "pgrestart": {"platform_keys": 2}, "redisdown": {"platform_keys": 2},
          "celerykill": {"platform_keys": 0}}


@pytest.fixture(scope="session")
def own_postgres():
    # Not pytest's temporary directory: the server runs as an unprivileged user (under root), which must
    # reach its data directory, and pytest's are private to their owner.
    directory = Path(tempfile.mkdtemp(prefix="headroom-faults-pg-"))
    directory.chmod(0o755)
    postgres = OwnPostgres(directory / "pgdata")
    try:
        manage(postgres.url, "migrate", "--no-input")
        yield postgres
    finally:
        postgres.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def fake():
    with FakeProvider() as provider:
        yield provider


@pytest.fixture(scope="session")
def worlds(own_postgres, fake):
    return seed(own_postgres.url, fake_url=fake.url, worlds=WORLDS)


@pytest.fixture
def world(request, worlds, fake):
    """The calling test's world (its module's WORLD), on a fake reset to its defaults afterwards."""
    yield worlds[request.module.WORLD]
    fake.reset()


@pytest.fixture
def own_redis():
    redis = OwnRedis()
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture
def books_balanced(own_postgres):
    """After the test: no hold or lease left, and `manage.py ledger_check` clean on the fault database."""
    yield own_postgres
    if not own_postgres.running:
        own_postgres.start()  # a test that failed while it was stopped; the next ones need it
    assert own_postgres.scalar("SELECT count(*) FROM billing_balancehold") == 0
    assert own_postgres.scalar("SELECT count(*) FROM keys_providerkeylease") == 0
    manage(own_postgres.url, "ledger_check")
