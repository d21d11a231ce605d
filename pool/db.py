"""Running the synchronous services from the async proxy.

One thread hop per phase (authenticate, plan, pick, settle). The calls run on
the event loop's default thread pool (thread_sensitive=False) so that requests
do not queue behind one another; each pool thread keeps its own database
connection across calls (Django's request signals, which would close it, do
not fire on the raw ASGI path), and a broken connection is dropped so the next
call reconnects.
"""

from collections.abc import Callable
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, connection

T = TypeVar("T")


def _run(fn: Callable[..., T], kwargs: dict) -> T:
    try:
        return fn(**kwargs)
    except (InterfaceError, OperationalError):
        connection.close()
        raise


async def db_call(fn: Callable[..., T], /, **kwargs) -> T:
    return await sync_to_async(_run, thread_sensitive=False)(fn, kwargs)
