"""Group commit for the gateway's statements: requests that arrive while one is in flight share the next.

Why: on PostgreSQL most of what a request cost the database was fixed cost per statement and per
transaction (a round trip, executor start-up, a commit and, for a settlement, a flush to disk), and
concurrent requests of one payer queued on the payer's row. A `Batcher` runs one statement at a time
for all the requests waiting on it (its PL/pgSQL functions, in pool/sql/, do each request's steps in
turn, in order), so under load those costs are shared and requests of one process never wait on each
other's rows; a request that finds no statement in flight runs at once, alone, so nothing waits for
a batch to fill.

Results go back to each request by position. If a batch fails as a whole, each of its requests runs
again alone, so one request's error (a constraint it alone breaks) reaches only that request.
"""

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence

logger = logging.getLogger(__name__)
MAX_BATCH = 64


class Batcher:
    """One statement in flight at a time per event loop; whatever waits meanwhile goes in the next."""

    def __init__(self, run: Callable[[Sequence], Awaitable[Sequence]], *, name: str):
        self._run = run  # items -> one result per item, in order
        self._name = name
        self._waiting: list[tuple[object, asyncio.Future]] = []
        self._draining = False
        self._drainer: asyncio.Task | None = None  # held: the loop keeps only weak references to tasks

    async def submit(self, item):
        """The item's result, once the batch it went in has committed.

        With no statement in flight the item runs at once, alone, in the caller's own task (as if there
        were no batcher: nothing to hand over, nothing to wait for). Otherwise it waits for the next
        batch, which a drain task runs; cancelling the caller then does not take the item back: it runs
        (and commits) with its batch all the same.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._draining:
            self._waiting.append((item, future))
            return await asyncio.shield(future)
        self._draining = True
        try:
            await self._run_batch([(item, future)])
        finally:
            if self._waiting:
                self._drainer = loop.create_task(self._drain())  # what arrived meanwhile goes on without it
            else:
                self._draining = False
        return future.result()

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                await self._run_batch(batch)
        finally:
            self._draining = False

    async def _run_batch(self, batch: list[tuple[object, asyncio.Future]]) -> None:
        items = [item for item, _ in batch]
        try:
            results = await self._run(items)
        except Exception as error:
            if len(batch) == 1:
                _settle_future(batch[0][1], error=error)
                return
            logger.warning("%s batch of %d failed (%s); running each alone", self._name, len(batch),
                           error.__class__.__name__)
            for pair in batch:
                await self._run_batch([pair])
            return
        except BaseException as error:  # cancelled (the loop is closing): nobody gets a result
            for _, future in batch:
                _settle_future(future, error=error)
            raise
        for (_, future), result in zip(batch, results, strict=True):
            _settle_future(future, result=result)


def _settle_future(future: asyncio.Future, *, result=None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


_batchers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Batcher]]" = weakref.WeakKeyDictionary()


def batcher(name: str, run: Callable[[Sequence], Awaitable[Sequence]]) -> Batcher:
    """The event loop's batcher for one kind of statement (a batcher belongs to the loop it runs on)."""
    of_loop = _batchers.setdefault(asyncio.get_running_loop(), {})
    found = of_loop.get(name)
    if found is None:
        found = of_loop[name] = Batcher(run, name=name)
    return found
