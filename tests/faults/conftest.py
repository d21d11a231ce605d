"""One PostgreSQL and one Redis of the fault tests' own for the session (tests/faults/services.py),
migrated once; each test's topology runs against them and may stop them."""

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.faults.services import OwnPostgres, OwnRedis, manage


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
