"""The HTTP client to providers: one pooled aiohttp session per event loop.

aiohttp rather than httpx on the hot path: PERFORMANCE.md measured httpx at
about 2.5× aiohttp's CPU per request, and httpx's async pool degrades badly
at high concurrency (encode/httpx#3215). Redirects are never followed (a
redirect could point anywhere); URLs come only from operator-set Provider rows.
"""

import asyncio
import functools
import socket
import weakref

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from django.conf import settings
from yarl import URL

from keys.upstream import address_is_public, private_upstreams_allowed


class PublicOnlyResolver(AbstractResolver):
    """The SSRF guard at connect time: resolve as usual, then drop every non-public address.

    Base URLs are checked when operators save them, but a name can later resolve
    elsewhere (DNS rebinding); filtering here costs nothing per request (the
    connector caches what this returns). Literal IP hosts never reach a resolver:
    those are refused when the base URL is saved (keys.upstream).
    """

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if private_upstreams_allowed():
            return results
        public = [r for r in results if address_is_public(r["host"])]
        if not public:
            raise OSError(f"the upstream host {host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


_sessions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession]" = weakref.WeakKeyDictionary()


def session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    current = _sessions.get(loop)
    if current is None or current.closed:
        current = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, ttl_dns_cache=300, enable_cleanup_closed=True, resolver=PublicOnlyResolver()
            ),
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


@functools.lru_cache(maxsize=1024)
def _url(url: str) -> URL:
    """Parsed once per endpoint: a provider's base URL and path change only when an operator edits them."""
    return URL(url)


async def post(url: str, *, secret: str, body: bytes) -> aiohttp.ClientResponse:
    return await session().post(
        _url(url),
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
