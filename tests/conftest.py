"""Suite-wide fixtures and the service policy.

Service-backed tests (marked `postgres` / `redis`) run whenever DATABASE_URL /
REDIS_URL point at live servers. Without them they are skipped locally, but
with CI=true a missing service fails the run: CI must never pass by skipping.
"""

import os

import pytest
from django.conf import settings
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


def _postgres_missing() -> str | None:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        return "DATABASE_URL does not point at PostgreSQL"
    return None


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
    problems = [p for p in (_postgres_missing(), _redis_missing()) if p]
    if problems:
        pytest.exit("CI=true but a required service is missing: " + "; ".join(problems), returncode=3)


def pytest_collection_modifyitems(config, items):
    checks = {"postgres": _postgres_missing, "redis": _redis_missing}
    cache: dict[str, str | None] = {}
    for item in items:
        for marker, check in checks.items():
            if item.get_closest_marker(marker) is None:
                continue
            if marker not in cache:
                cache[marker] = check()
            if cache[marker] and not IN_CI:
                item.add_marker(pytest.mark.skip(reason=f"{cache[marker]} (set it to run this test)"))


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def user(db):
    from tests.accounts.factories import UserFactory

    return UserFactory()


@pytest.fixture
def authed_client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user=user)
    return client
