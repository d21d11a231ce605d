"""A cut or cancelled stream is charged for everything delivered, whatever its kind (README "Money
integrity"): answer text, reasoning (`reasoning_content`), refusals and tool-call arguments alike; an
answer without usage likewise. What was delivered is the floor (for a cut stream, what the fake
provider billed), the hold the ceiling."""

import asyncio

import httpx
import pytest

from core.money import token_cost
from pool.models import RequestRecord
from tests.fakeprovider import wire
from tests.pool.conftest import INPUT_PRICE, MODEL, OUTPUT_PRICE, PROMPT, PROVIDER
from tests.pool.helpers import SIGNUP, assert_ledger_clean, main, wait_until

MODEL_ID = f"{PROVIDER}/{MODEL}"
KINDS = wire.DELTA_KINDS  # content, reasoning_content, refusal, tool_calls
CAP = 1_000


def _stream(world, member, **body) -> str:
    with httpx.stream(
        "POST", f"{world.url}/v1/chat/completions", headers={"Authorization": f"Bearer {member.api_key}"},
        json={"model": MODEL_ID, "messages": PROMPT, "stream": True, "max_tokens": CAP, **body}, timeout=20,
    ) as response:
        return response.read().decode()


def _upstream_billed(world, key) -> int:
    record = next(r for r in reversed(world.fake.requests) if r.key == key.secret and r.billed is not None)
    return record.billed.completion_tokens


def _held(prompt_tokens_bound: int) -> int:
    return token_cost(prompt_tokens_bound, INPUT_PRICE) + token_cost(CAP, OUTPUT_PRICE)


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_cut_after_240_events_of_any_kind_is_charged_for_them(world, kind):
    key = world.key()
    world.fake.script(key.secret, answer=[(kind, 300)], cut_stream_after=240)
    alice = world.member()

    body = _stream(world, alice)

    assert '"code":"upstream_stream_cut"' in body
    assert wait_until(lambda: world.fake.requests and world.fake.requests[-1].billed is not None)
    record = RequestRecord.objects.get()
    billed = _upstream_billed(world, key)
    print(f"\n{kind}: provider billed {billed} completion tokens; charged as {record.completion_tokens}")
    assert record.outcome == "cut" and record.usage_estimated
    assert billed == 240
    assert record.completion_tokens >= billed  # every delivered token paid for
    assert record.charged == record.cost == token_cost(record.prompt_tokens, INPUT_PRICE) + token_cost(
        record.completion_tokens, OUTPUT_PRICE)
    assert record.charged <= _held(record.prompt_tokens)  # never beyond what was held
    assert main(alice.user) == SIGNUP - record.charged
    assert_ledger_clean()


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_that_leaves_mid_stream_pays_for_every_kind_it_received(world, kind):
    key = world.key()
    # A stream far longer than the client reads (900 events, 18 s if never cut), so that on a loaded
    # machine the client still leaves long before the provider would have finished.
    world.fake.chunk_delay = 0.02
    world.fake.script(key.secret, answer=[(kind, 900)])
    alice = world.member()

    async def read_then_leave(events: int) -> int:
        seen = 0
        async with httpx.AsyncClient(timeout=20) as client:
            async with client.stream(
                "POST", f"{world.url}/v1/chat/completions", headers={"Authorization": f"Bearer {alice.api_key}"},
                json={"model": MODEL_ID, "messages": PROMPT, "stream": True, "max_tokens": CAP},
            ) as response:
                async for chunk in response.aiter_bytes():
                    seen += chunk.count(b'"delta"')
                    if seen >= events:
                        return seen  # leaving the block closes the connection
        return seen

    received = asyncio.run(read_then_leave(30))
    world.fake.chunk_delay = 0.0
    assert wait_until(RequestRecord.objects.exists)

    record = RequestRecord.objects.get()
    assert record.outcome == "cancelled"
    # every event the client received is paid for (the provider may have generated more before it
    # noticed the gateway leave: README "Money integrity" says what that costs whom)
    assert record.completion_tokens >= received
    assert record.charged <= _held(record.prompt_tokens)
    assert main(alice.user) == SIGNUP - record.charged
    assert_ledger_clean()


def test_an_answer_without_usage_is_charged_for_its_reasoning_and_tool_calls(world):
    key = world.key()
    world.fake.script(key.secret, answer=[("reasoning_content", 50), ("tool_calls", 30)], usage=False)
    alice = world.member()

    alice.client(world.url).chat.completions.create(model=MODEL_ID, messages=PROMPT, max_tokens=CAP)

    record = RequestRecord.objects.get()
    assert record.usage_estimated
    assert record.completion_tokens >= _upstream_billed(world, key) == 80
    assert_ledger_clean()
