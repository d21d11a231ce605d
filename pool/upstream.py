"""The HTTP client to providers: one pooled aiohttp session per event loop.

aiohttp rather than httpx on the hot path: PERFORMANCE.md measured httpx at
about 2.5× aiohttp's CPU per request, and httpx's async pool degrades badly
at high concurrency (encode/httpx#3215). Redirects are never followed (a
redirect could point anywhere); URLs come only from operator-set Provider rows.
"""

import asyncio
import weakref

import aiohttp
from django.conf import settings

_sessions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession]" = weakref.WeakKeyDictionary()


def session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    current = _sessions.get(loop)
    if current is None or current.closed:
        current = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True),
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=settings.HEADROOM_UPSTREAM_CONNECT_TIMEOUT,
                sock_read=settings.HEADROOM_UPSTREAM_READ_TIMEOUT,
            ),
            auto_decompress=True,
            trust_env=False,
            skip_auto_headers=("User-Agent",),
        )
        _sessions[loop] = current
    return current


async def post(url: str, *, secret: str, body: bytes) -> aiohttp.ClientResponse:
    return await session().post(
        url,
        data=body,
        headers={
            "Authorization": f"Bearer {secret}",
            "Content-Type": "application/json",
            "User-Agent": "Headroom/1.0",
        },
        allow_redirects=False,
    )


async def close_all() -> None:
    for current in list(_sessions.values()):
        await current.close()
