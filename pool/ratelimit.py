"""The gateway's own rate limit: a fixed one-minute window per API key, in the shared cache.

Why not Django's cache API: its async methods hand every call to one shared
thread, and its sync ones would block the event loop on Redis. With a Redis
cache (production) the count is one pipelined INCR + EXPIRE on redis-py's
asyncio client, one client per event loop; with the in-process cache of the
embedded default there is no I/O to wait for, so Django's cache is used as is.

Why not the `limits` package (its async Redis storage, moving window): its moving window keeps a
Redis list of one timestamp per request (up to 1,200 per key a minute at the default) trimmed by a
Lua script on every call, and its default async client is coredis, a second Redis client and
connection pool per worker beside redis-py's; the count here is one pipelined INCR + EXPIRE on the
client the process already has, O(1) per key. The price is the fixed window's edge: a key can spend
up to twice its limit across a minute boundary, acceptable for a limit that guards capacity, not
money (the balance holds guard money). Swapping would change the benchmarked per-request work.

The limit fails open: if the cache cannot count, the request is served (and a
warning logged) rather than everyone refused; after a failure the limiter
rests for a few seconds instead of timing out on every request.
"""

import asyncio
import logging
import time

from django.conf import settings
from django.core.cache import cache

from pool import errors
from pool.errors import GatewayError

logger = logging.getLogger(__name__)
REDIS_BACKEND = "django.core.cache.backends.redis.RedisCache"
REST_AFTER_FAILURE_SECONDS = 5.0
_clients: dict[tuple[asyncio.AbstractEventLoop, str], object] = {}
_resting_until: dict[str, float] = {}  # cache location -> monotonic time it may be tried again


def _redis_location() -> str | None:
    config = settings.CACHES["default"]
    if config["BACKEND"] != REDIS_BACKEND:
        return None
    location = config["LOCATION"]
    return location[0] if isinstance(location, (list, tuple)) else location


def _redis(location: str):
    key = (asyncio.get_running_loop(), location)
    client = _clients.get(key)
    if client is None:
        from redis.asyncio import Redis

        client = _clients[key] = Redis.from_url(location, socket_connect_timeout=0.5, socket_timeout=0.5)
    return client


async def _count(key: str) -> int:
    location = _redis_location()
    if location is None:
        cache.add(key, 0, timeout=120)  # in-process: no I/O
        try:
            return cache.incr(key)
        except ValueError:  # expired between add and incr
            return 1
    pipe = _redis(location).pipeline(transaction=False)
    pipe.incr(cache.make_and_validate_key(key))
    pipe.expire(cache.make_and_validate_key(key), 120)
    count, _ = await pipe.execute()
    return count


async def rate_limit(*, key: str) -> None:
    """Count one request for an API key (by its hash: this runs before the database is asked whether
    the key is valid, so that a request over its limit costs the database nothing); 429 with
    Retry-After when over the per-minute limit."""
    limit = settings.HEADROOM_RATE_LIMIT_PER_MINUTE
    location = _redis_location() or "local"
    if limit <= 0 or time.monotonic() < _resting_until.get(location, 0.0):
        return
    now = time.time()
    try:
        count = await _count(f"rl:{key}:{int(now // 60)}")
    except Exception as error:  # the cache is down: serve rather than refuse everyone
        _resting_until[location] = time.monotonic() + REST_AFTER_FAILURE_SECONDS
        logger.warning("rate limit not applied: cache unavailable (%s)", error.__class__.__name__)
        return
    if count > limit:
        raise GatewayError(429, errors.RATE_LIMITED, type="rate_limit_error", code="rate_limited",
                           headers={"retry-after": str(60 - int(now) % 60)})


async def close_all() -> None:
    loop = asyncio.get_running_loop()
    for key in [k for k in _clients if k[0] is loop]:
        await _clients.pop(key).aclose()
