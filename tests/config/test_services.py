"""The service-backed pieces: Redis as cache and Celery broker (CI runs these for real)."""

import os
import uuid

import pytest
from django.core.cache.backends.redis import RedisCache

pytestmark = pytest.mark.redis


def test_redis_cache_round_trip():
    cache = RedisCache(os.environ["REDIS_URL"], {})
    key = f"headroom-test:{uuid.uuid4()}"
    cache.set(key, {"n": 1}, timeout=30)
    assert cache.get(key) == {"n": 1}
    cache.delete(key)


def test_celery_broker_accepts_a_connection():
    from celery import Celery

    app = Celery("headroom-test", broker=os.environ["REDIS_URL"])
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        assert conn.connected
