"""Suite-wide fixtures and the service policy.

The suite always runs on PostgreSQL (`make test` starts the embedded server when
DATABASE_URL is unset). Tests of Redis itself (marked `redis`) need REDIS_URL,
which `make test` also provides; run without it (pytest called directly), they
are skipped locally, but with CI=true a missing service fails the run: CI must
never pass by skipping.
"""

import os

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from rest_framework.test import APIClient

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

hypothesis_settings.register_profile(
    "ci",
    derandomize=True,  # the same examples every run: a failure reproduces on a re-run
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.register_profile(
    "dev", print_blob=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("ci" if IN_CI else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _redis_missing() -> str | None:
    url = os.environ.get("REDIS_URL")
    if not url:
        return "REDIS_URL is not set"
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        return f"Redis at REDIS_URL does not answer ({error.__class__.__name__})"
    return None


def pytest_sessionstart(session):
    if not IN_CI:
        return
    problem = _redis_missing()
    if problem:
        pytest.exit(f"CI=true but a required service is missing: {problem}", returncode=3)


def pytest_collection_modifyitems(config, items):
    redis_tests = [item for item in items if item.get_closest_marker("redis") is not None]
    problem = _redis_missing() if redis_tests and not IN_CI else None
    for item in redis_tests if problem else ():
        item.add_marker(pytest.mark.skip(reason=f"{problem} (set it, or run `make test`)"))


def _uses_database(request) -> bool:
    return request.node.get_closest_marker("django_db") is not None or bool(
        {"db", "transactional_db", "live_server", "django_db_reset_sequences"} & set(request.fixturenames)
    )


@pytest.fixture(autouse=True)
def ledger_stays_sound(request):
    """Every test that touches the database leaves the books as `manage.py ledger_check` wants them:
    the suite as a whole proves the ledger sound after everything it does, not only in the tests about
    the ledger. Tests that break the books on purpose (to see the check fail) are marked `ledger_broken`."""
    if not _uses_database(request) or request.node.get_closest_marker("ledger_broken") is not None:
        yield
        return
    # Ask for the database fixture from here, so that this teardown runs before the database's.
    request.getfixturevalue("_django_db_helper")
    yield
    from billing.services import ledger_problems

    problems = ledger_problems()
    assert not problems, "ledger_check would fail after this test:\n" + "\n".join(problems)


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def user(db):
    from tests.accounts.factories import UserFactory

    return UserFactory()


def signed_in_client(user, password: str = "correct-horse-battery-staple") -> APIClient:
    """A client signed in through allauth's login form, as a member on the dashboard is: its session
    records a fresh sign-in, which moving money out needs (accounts.permissions)."""
    client = APIClient()
    response = client.post("/accounts/login/", {"login": user.email, "password": password})
    assert response.status_code == 302, response.content[:500]
    return client


@pytest.fixture
def authed_client(user) -> APIClient:
    return signed_in_client(user)


@pytest.fixture(autouse=True)
def throttle_counts_forgotten():
    """The management API's throttle counts and allauth's login limits live in the cache, Redis under
    `make test`, which outlives a test and a run (whose users get the same ids again): each test starts
    with none."""
    import redis
    from django.core.cache import cache

    if not hasattr(cache, "_cache") or not hasattr(cache._cache, "get_client"):  # in-process cache
        cache.clear()
        return
    client = cache._cache.get_client(write=True)
    try:
        keys = [key for pattern in ("throttle_*", "allauth:rl:*")
                for key in client.scan_iter(match=cache.make_key(pattern), count=1000)]
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # no Redis: the tests that need it say so (the `redis` marker)
