"""The batcher's contract, without a database: who runs when, with whom, and what each caller gets."""

import asyncio

import pytest

from pool.hotpath.batch import MAX_BATCH, Batcher


class Recorder:
    """A batch runner that records each batch and can be held open, or made to fail."""

    def __init__(self):
        self.batches: list[list] = []
        self.gate: asyncio.Event | None = None
        self.fail_on: set = set()

    async def __call__(self, items):
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        bad = [item for item in items if item in self.fail_on]
        if bad:
            raise ValueError(f"bad item {bad[0]}")
        return [item * 10 for item in items]


def _behind_one_in_flight(runner: Recorder, items, *, cancel: int | None = None) -> tuple:
    """Submit 0 and, while its statement is held in flight, `items`; then let it finish. Returns the
    first result and the others' results (or errors, or True for the one cancelled meanwhile)."""

    async def scenario():
        batcher = Batcher(runner, name="test")
        runner.gate = asyncio.Event()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0)  # the first one's statement is in flight
        waiting = [asyncio.ensure_future(batcher.submit(n)) for n in items]
        await asyncio.sleep(0)
        if cancel is not None:
            waiting[cancel].cancel()
        runner.gate.set()
        result = await first
        await asyncio.sleep(0.01)  # the drain task runs what waited
        return result, [w.cancelled() or w.exception() or w.result() for w in waiting]

    return asyncio.run(scenario())


def test_a_lone_request_runs_at_once_in_a_batch_of_its_own():
    runner = Recorder()

    async def scenario():
        batcher = Batcher(runner, name="test")
        return [await batcher.submit(1), await batcher.submit(2)]

    assert asyncio.run(scenario()) == [10, 20]
    assert runner.batches == [[1], [2]]


def test_requests_arriving_while_a_statement_is_in_flight_share_the_next_one_in_order():
    runner = Recorder()
    assert _behind_one_in_flight(runner, (2, 3, 4)) == (0, [20, 30, 40])
    assert runner.batches == [[0], [2, 3, 4]]


def test_a_batch_never_exceeds_its_limit():
    runner = Recorder()
    first, rest = _behind_one_in_flight(runner, range(1, MAX_BATCH + 6))
    assert rest == [n * 10 for n in range(1, MAX_BATCH + 6)]
    assert [len(b) for b in runner.batches] == [1, MAX_BATCH, 5]


def test_one_bad_item_fails_alone_and_the_rest_of_its_batch_is_answered():
    runner = Recorder()
    runner.fail_on = {3}
    _, (two, three, four) = _behind_one_in_flight(runner, (2, 3, 4))
    assert (two, four) == (20, 40)
    assert isinstance(three, ValueError) and "bad item 3" in str(three)
    # the shared batch failed as a whole, then each of its items ran alone
    assert runner.batches == [[0], [2, 3, 4], [2], [3], [4]]


def test_a_lone_request_that_fails_gets_its_error():
    runner = Recorder()
    runner.fail_on = {7}

    async def scenario():
        batcher = Batcher(runner, name="test")
        with pytest.raises(ValueError):
            await batcher.submit(7)
        return await batcher.submit(8)  # and the batcher goes on

    assert asyncio.run(scenario()) == 80


def test_a_caller_cancelled_while_waiting_does_not_take_its_item_back():
    """Its item runs and commits with its batch (a settlement must not be lost to a cancellation)."""
    runner = Recorder()
    _, (cancelled,) = _behind_one_in_flight(runner, (2,), cancel=0)
    assert cancelled is True
    assert runner.batches == [[0], [2]]
