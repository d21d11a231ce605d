"""Upstream trouble: 429 auto-pause, next-key retry, cut streams, client disconnects, 5xx/timeouts."""

import asyncio
import time
from decimal import Decimal

import httpx
import pytest
from openai import APIStatusError

from core.money import percent_of
from keys.models import ProviderKey, ProviderKeyTransition
from keys.services import provider_key_in_flight
from pool.models import RequestRecord
from tests.pool.conftest import COST, MODEL, PROMPT, PROVIDER
from tests.pool.helpers import SIGNUP, assert_ledger_clean, main, wait_until

MODEL_ID = f"{PROVIDER}/{MODEL}"
POOL_MODEL_ID = f"{PROVIDER}-pool/{MODEL}"


def _ask(member, url, **kwargs):
    return member.client(url).chat.completions.create(model=MODEL_ID, messages=PROMPT, **kwargs)


def test_a_429_tries_the_next_key_and_the_third_pauses_the_key(world):
    flaky = world.key()
    steady = world.key()
    world.fake.script(flaky.secret, status=429, retry_after=60)
    alice = world.member()

    for _ in range(6):
        _ask(alice, world.url)  # every request is answered: the steady key takes over

    flaky.refresh_from_db()
    assert flaky.status == ProviderKey.Status.PAUSED
    assert flaky.consecutive_429s == 3
    assert flaky.retry_after_until is not None
    pauses = ProviderKeyTransition.objects.filter(key=flaky, to_status=ProviderKey.Status.PAUSED)
    assert pauses.count() == 1
    # once paused, the key is no longer tried
    assert world.fake.count(key=flaky.secret, path="/chat/completions") == 3
    assert RequestRecord.objects.filter(provider_key=steady, outcome="succeeded").count() == 6
    assert main(alice.user) == SIGNUP - 6 * COST
    assert_ledger_clean()


def test_a_success_resets_the_429_counter(world):
    key = world.key()
    alice = world.member()
    world.fake.script(key.secret, status=429, times=2)
    for _ in range(2):
        with pytest.raises(APIStatusError):
            _ask(alice, world.url)
    _ask(alice, world.url)
    key.refresh_from_db()
    assert (key.status, key.consecutive_429s) == (ProviderKey.Status.ACTIVE, 0)
    assert_ledger_clean()


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"status": 500}, 502, "upstream_error"),
        ({"status": 503}, 502, "upstream_error"),
        ({"status": 429, "retry_after": 9}, 429, "upstream_rate_limited"),
        ({"status": 400}, 400, "upstream_rejected"),
        ({"status": 401}, 502, "upstream_error"),
    ],
)
def test_upstream_errors_map_to_stable_errors_without_the_provider_body(world, fault, status, code):
    key = world.key()
    world.fake.script(key.secret, **fault)
    alice = world.member()
    with pytest.raises(APIStatusError) as raised:
        _ask(alice, world.url)
    assert raised.value.status_code == status
    assert raised.value.body["code"] == code
    assert "****" not in raised.value.response.text  # the fake echoes a masked key in every error body
    assert key.secret[-4:] not in raised.value.response.text
    assert main(alice.user) == SIGNUP  # nothing charged for an unanswered request
    assert RequestRecord.objects.get().outcome == "failed"
    assert_ledger_clean()


def test_no_key_is_503_and_a_slow_provider_is_504(world, settings):
    alice = world.member()
    with pytest.raises(APIStatusError) as raised:
        _ask(alice, world.url)
    assert (raised.value.status_code, raised.value.body["code"]) == (503, "no_key_available")

    from pool import upstream

    settings.HEADROOM_UPSTREAM_READ_TIMEOUT = 0.3
    upstream._sessions.clear()
    key = world.key()
    world.fake.script(key.secret, first_byte_delay=2)
    with pytest.raises(APIStatusError) as raised:
        _ask(alice, world.url)
    upstream._sessions.clear()
    assert (raised.value.status_code, raised.value.body["code"]) == (504, "upstream_timeout")
    assert_ledger_clean()


def test_stream_cut_mid_way_ends_with_an_error_event_and_pays_no_reward(world):
    alice = world.member()
    world.key(owner=alice.user, donate_to_pool=True)
    bob = world.member()
    bob_key = world.key(owner=bob.user, donate_to_pool=True)
    world.fake.script(bob_key.secret, cut_stream_after=5)

    with httpx.stream(
        "POST", f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {alice.api_key}"},
        json={"model": POOL_MODEL_ID, "messages": PROMPT, "stream": True},
        timeout=10,
    ) as response:
        body = response.read().decode()
    events = [line for line in body.split("\n\n") if line.strip()]
    assert len([e for e in events if '"delta"' in e]) == 5
    assert '"code":"upstream_stream_cut"' in events[-1]
    assert "[DONE]" not in body

    record = RequestRecord.objects.get()
    assert (record.outcome, record.usage_estimated, record.reward) == ("cut", True, 0)
    assert main(bob.user) == SIGNUP  # no donor reward
    assert main(alice.user) == SIGNUP
    bob_key.refresh_from_db()
    assert (bob_key.status, bob_key.failure_count, bob_key.consecutive_429s) == ("active", 0, 0)  # not penalised
    assert provider_key_in_flight(key_id=bob_key.pk) == 0
    assert_ledger_clean()


def test_client_disconnect_mid_stream_settles_once_and_cancels_the_upstream_call(world):
    key = world.key()
    world.fake.chunk_delay = 0.2  # a slow stream: 20 chunks over four seconds
    alice = world.member()

    async def read_two_chunks_then_leave():
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream(
                "POST", f"{world.url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {alice.api_key}"},
                json={"model": MODEL_ID, "messages": PROMPT, "stream": True},
            ) as response:
                seen = 0
                async for chunk in response.aiter_bytes():
                    seen += chunk.count(b'"delta"')
                    if seen >= 2:
                        break  # leaving the block closes the connection

    started = time.monotonic()
    asyncio.run(read_two_chunks_then_leave())
    wait_until(RequestRecord.objects.exists)
    time.sleep(0.3)  # a second settlement, if there were one, would have happened by now

    record = RequestRecord.objects.get()
    assert record.outcome == "cancelled"
    assert record.usage_estimated is True
    # the two events read, and more relayed before the gateway saw the client leave: their bytes, an
    # upper bound of their tokens, never the whole 20-chunk answer's 109
    assert 2 <= record.completion_tokens < 109
    assert time.monotonic() - started < 3.5  # the gateway stopped reading: the upstream call was cancelled
    assert main(alice.user) == SIGNUP - record.charged
    assert record.charged == record.cost > 0  # delivered tokens are paid for
    assert provider_key_in_flight(key_id=key.pk) == 0
    world.fake.chunk_delay = 0.0
    assert_ledger_clean()


def test_exchange_earning_only_on_success(world):
    bob = world.member()
    key = world.key(owner=bob.user, exchange=True)
    alice = world.member()
    world.fake.script(key.secret, cut_stream_after=3, times=1)
    with httpx.stream(
        "POST", f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {alice.api_key}"},
        json={"model": MODEL_ID, "messages": PROMPT, "stream": True}, timeout=10,
    ) as response:
        response.read()
    from billing.selectors import balances_for_owner

    assert balances_for_owner(owner=bob.user).frozen == 0
    _ask(alice, world.url)
    from exchange.selectors import payout_rate_resolve

    rate = payout_rate_resolve(user=bob.user, provider=world.provider, task="chat").percent
    assert balances_for_owner(owner=bob.user).frozen == percent_of(COST, Decimal(rate))
    assert_ledger_clean()


@pytest.mark.parametrize("allowed", [True, False])
def test_upstream_names_resolving_to_private_addresses_are_refused_at_connect_time(world, settings, allowed):
    from keys.models import Provider
    from pool import upstream

    # given a provider whose host name resolves to loopback (as after a DNS change)
    Provider.objects.filter(pk=world.provider.pk).update(base_url=world.fake.url.replace("127.0.0.1", "localhost") + "/v1")
    key = world.key()
    settings.HEADROOM_ALLOW_PRIVATE_UPSTREAMS = allowed
    upstream._sessions.clear()  # a fresh connector: no cached resolution
    alice = world.member()

    if allowed:
        assert _ask(alice, world.url).choices
    else:
        with pytest.raises(APIStatusError) as raised:
            _ask(alice, world.url)
        assert (raised.value.status_code, raised.value.body["code"]) == (502, "upstream_unreachable")
        assert world.fake.count(key=key.secret, path="/chat/completions") == 0
        assert main(alice.user) == SIGNUP
    upstream._sessions.clear()
    assert_ledger_clean()


def test_idle_gaps_get_keepalives_and_a_silent_provider_ends_the_stream(world, settings):
    from pool import upstream

    settings.HEADROOM_SSE_KEEPALIVE_SECONDS = 0.2
    settings.HEADROOM_UPSTREAM_READ_TIMEOUT = 1.0
    upstream._sessions.clear()  # sessions carry the read timeout
    world.key()
    world.fake.chunk_delay = 0.5  # idle gaps longer than the keep-alive interval
    alice = world.member()
    with httpx.stream(
        "POST", f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {alice.api_key}"},
        json={"model": MODEL_ID, "messages": PROMPT, "stream": True, "max_tokens": 3}, timeout=20,
    ) as response:
        body = response.read().decode()
    assert ": keepalive" in body
    assert body.rstrip().endswith("data: [DONE]")

    world.fake.chunk_delay = 3.0  # now silent for longer than the read timeout
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {alice.api_key}"},
        json={"model": MODEL_ID, "messages": PROMPT, "stream": True, "max_tokens": 3}, timeout=20,
    ) as response:
        body = response.read().decode()
    assert '"code":"upstream_stream_cut"' in body
    assert time.monotonic() - started < 3.0  # ended by the read timeout, not by the provider
    assert body.count(": keepalive") < 20  # no spinning on a dead connection
    world.fake.chunk_delay = 0.0
    upstream._sessions.clear()
    assert_ledger_clean()
