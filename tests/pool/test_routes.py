"""Every route kind through the official openai SDK, streaming and not, with its exact ledger effect."""

from decimal import Decimal

import pytest
from openai import APIStatusError

from billing.models import BalanceHold, ByokMonthlyUsage
from core.money import percent_of
from keys.models import ProviderKeyStats
from pool.models import RequestRecord
from tests.pool.conftest import (
    COMPLETION_TOKENS,
    COST,
    MODEL,
    PROMPT,
    PROMPT_TOKENS,
    PROVIDER,
)
from tests.pool.helpers import (
    SIGNUP,
    assert_ledger_clean,
    frozen,
    holds_during,
    main,
    platform,
    usd_float,
)

MODEL_ID = f"{PROVIDER}/{MODEL}"
POOL_MODEL_ID = f"{PROVIDER}-pool/{MODEL}"


def _chat(member, url, *, stream=False, include_usage=False, model=MODEL_ID, **extra):
    client = member.client(url)
    if not stream:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=PROMPT, **extra)
        return raw.headers, raw.parse()
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = client.chat.completions.with_raw_response.create(model=model, messages=PROMPT, stream=True, **options, **extra)
    return raw.headers, list(raw.parse())


def test_platform_route_charges_the_notional_cost(world):
    world.key()  # a platform key
    alice = world.member()

    headers, completion = _chat(alice, world.url)

    assert headers["x-headroom-route"] == "platform"
    assert headers["x-headroom-request-id"].startswith("req_")
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    assert completion.usage.completion_tokens == COMPLETION_TOKENS
    assert completion.usage.cost == usd_float(COST)
    assert completion.usage.is_byok is False
    assert completion.model == MODEL_ID
    assert main(alice.user) == SIGNUP - COST
    assert platform("revenue") == COST
    record = RequestRecord.objects.get()
    assert (record.route, record.outcome, record.cost, record.charged, record.reward) == (
        "platform", "succeeded", COST, COST, 0
    )
    assert record.request_id == headers["x-headroom-request-id"]
    assert_ledger_clean()


@pytest.mark.parametrize("include_usage", [True, False])
def test_platform_route_streaming(world, include_usage):
    world.key()
    alice = world.member()

    headers, chunks = _chat(alice, world.url, stream=True, include_usage=include_usage)

    assert headers["content-type"].startswith("text/event-stream")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == [f"tok{i}" for i in range(COMPLETION_TOKENS)]
    usage_chunks = [c for c in chunks if c.usage]
    if include_usage:
        assert len(usage_chunks) == 1
        assert usage_chunks[0].usage.cost == usd_float(COST)
        assert usage_chunks[0].usage.completion_tokens == COMPLETION_TOKENS
    else:
        assert usage_chunks == []  # asked of the provider for settlement, hidden from the client
    # the provider was asked for usage either way
    sent = [r.json for r in world.fake.requests if r.path.endswith("/chat/completions")]
    assert sent[0]["stream_options"]["include_usage"] is True
    assert "key_pool_mode" not in sent[0]
    record = RequestRecord.objects.get()
    assert (record.stream, record.usage_estimated, record.charged) == (True, False, COST)
    assert main(alice.user) == SIGNUP - COST
    assert_ledger_clean()


def test_exchange_route_pays_the_owner_into_frozen_balance(world):
    from exchange.selectors import payout_rate_resolve

    bob = world.member()
    key = world.key(owner=bob.user, exchange=True)
    alice = world.member()

    headers, completion = _chat(alice, world.url)

    assert headers["x-headroom-route"] == "exchange"
    rate = payout_rate_resolve(user=bob.user, provider=world.provider, task="chat").percent
    assert rate > 0
    earning = percent_of(COST, Decimal(rate))
    assert main(alice.user) == SIGNUP - COST
    assert frozen(bob.user) == earning
    assert main(bob.user) == SIGNUP
    record = RequestRecord.objects.get()
    assert (record.route, record.reward, record.payout_rate) == ("exchange", earning, rate)
    stats = ProviderKeyStats.objects.get(key=key)
    assert (stats.requests_served, stats.credits_earned) == (1, earning)
    # the earning names the ledger transaction that credited it
    from exchange.models import ExchangeEarning

    row = ExchangeEarning.objects.select_related("ledger_transaction").get(request_id=record.request_id)
    assert (row.provider_key_id, row.amount, row.settled_cost, row.collected) == (key.pk, earning, COST, COST)
    assert sorted(row.ledger_transaction.entries.values_list("account__kind", "amount")) == [
        ("exchange_payouts", -earning), ("frozen", earning),
    ]
    assert_ledger_clean()


def test_an_exchange_key_at_a_zero_rate_earns_nothing_and_its_record_says_so(world):
    from exchange.models import ExchangeEarning
    from tests.exchange.factories import rule

    bob = world.member()
    key = world.key(owner=bob.user, exchange=True)
    rule("0", user=bob.user)  # Bob's own rule; the global rate keeps the exchange open
    alice = world.member()

    headers, _ = _chat(alice, world.url)

    assert headers["x-headroom-route"] == "exchange"
    assert main(alice.user) == SIGNUP - COST
    assert frozen(bob.user) == 0
    row = ExchangeEarning.objects.get(provider_key=key)
    assert (row.amount, row.rate_percent, row.settled_cost, row.collected, row.ledger_transaction_id) == (
        0, Decimal("0"), COST, COST, None)
    assert RequestRecord.objects.get().reward == 0
    assert_ledger_clean()


def test_platform_only_leaves_exchange_keys_out(world):
    bob = world.member()
    world.key(owner=bob.user, exchange=True)
    alice = world.member(key_pool_mode="platformOnly")

    with pytest.raises(APIStatusError) as raised:
        _chat(alice, world.url)
    assert raised.value.status_code == 503
    # the same refusal when the request body asks for it
    carol = world.member()
    with pytest.raises(APIStatusError) as raised:
        _chat(carol, world.url, extra_body={"key_pool_mode": "platformOnly"})
    assert raised.value.status_code == 503
    assert frozen(bob.user) == 0
    assert_ledger_clean()


@pytest.mark.parametrize("stream", [False, True])
def test_byok_route_is_free_within_the_tier(world, stream):
    alice = world.member()
    world.key(owner=alice.user, byok=True)

    headers, result = _chat(alice, world.url, stream=stream, include_usage=True)

    assert headers["x-headroom-route"] == "byok"
    usage = result.usage if not stream else [c for c in result if c.usage][0].usage
    assert usage.is_byok is True
    assert usage.cost == 0
    assert main(alice.user) == SIGNUP
    assert ByokMonthlyUsage.objects.get(user=alice.user).requests == 1
    record = RequestRecord.objects.get()
    assert (record.route, record.cost, record.charged, record.fee) == ("byok", COST, 0, 0)
    assert_ledger_clean()


@pytest.mark.parametrize("stream", [False, True])
def test_pool_route_rewards_the_donor_and_never_self_serves(world, stream):
    alice = world.member()
    alice_key = world.key(owner=alice.user, donate_to_pool=True)
    bob = world.member()
    bob_key = world.key(owner=bob.user, donate_to_pool=True)

    for _ in range(3):
        headers, _ = _chat(alice, world.url, model=POOL_MODEL_ID, stream=stream)
        assert headers["x-headroom-route"] == "pool"

    reward = percent_of(COST, Decimal(5))
    assert main(alice.user) == SIGNUP  # the requester is not charged
    assert main(bob.user) == SIGNUP + 3 * reward
    assert platform("pool_rewards") == -3 * reward
    assert world.fake.count(key=alice_key.secret, path="/chat/completions") == 0
    assert world.fake.count(key=bob_key.secret, path="/chat/completions") == 3
    assert set(RequestRecord.objects.values_list("provider_key_id", flat=True)) == {bob_key.pk}
    assert ProviderKeyStats.objects.get(key=bob_key).credits_earned == 3 * reward
    assert_ledger_clean()


def test_embeddings_and_models(world):
    world.key()
    alice = world.member()
    client = alice.client(world.url)

    raw = client.embeddings.with_raw_response.create(model=MODEL_ID, input=["one two", "three"])
    result = raw.parse()
    assert raw.headers["x-headroom-route"] == "platform"
    assert len(result.data) == 2
    record = RequestRecord.objects.get()
    assert record.task == "embeddings"
    assert record.cost == record.prompt_tokens * 1_000 > 0
    assert main(alice.user) == SIGNUP - record.cost

    ids = [m.id for m in client.models.list()]
    assert MODEL_ID in ids and POOL_MODEL_ID in ids
    assert_ledger_clean()


def test_global_zero_rate_takes_exchange_keys_out_whatever_user_rules_say(world):
    from exchange.models import PayoutRateRule
    from exchange.services import payout_rate_global_set

    bob = world.member()
    exchange_key = world.key(owner=bob.user, exchange=True)
    platform_key = world.key()
    # given a generous user override for Bob, then the global switch at 0%
    PayoutRateRule.objects.create(user=bob.user, percent=Decimal("50.00"))
    payout_rate_global_set(percent="0")
    alice = world.member()

    routes = {_chat(alice, world.url)[0]["x-headroom-route"] for _ in range(4)}

    assert routes == {"platform"}  # platform keys keep serving
    assert world.fake.count(key=exchange_key.secret, path="/chat/completions") == 0
    assert world.fake.count(key=platform_key.secret, path="/chat/completions") == 4
    assert frozen(bob.user) == 0
    # and back on: the exchange key serves again, at Bob's own rate
    payout_rate_global_set(percent="80")
    routes = {_chat(alice, world.url)[0]["x-headroom-route"] for _ in range(4)}
    assert routes == {"platform", "exchange"}
    assert frozen(bob.user) == 2 * percent_of(COST, Decimal("50.00"))
    assert_ledger_clean()


def test_the_hold_follows_the_model_price_in_force_and_the_route(world):
    """Each request reserves its worst case at the prices in force when it is made (a price change
    shows at once, whatever the gateway read before), and only on a route that charges."""
    from core.money import token_cost
    from keys.models import ProviderModel
    from tests.pool.conftest import INPUT_PRICE

    platform_key = world.key()
    alice = world.member()
    client = alice.client(world.url)

    def held_for(*secrets) -> int | None:
        def ask():
            return client.chat.completions.with_raw_response.create(model=MODEL_ID, messages=PROMPT, max_tokens=1000)

        raw, held = holds_during(ask, fake=world.fake, secrets=secrets)
        request_id = raw.headers["x-headroom-request-id"]
        assert set(held) <= {f"{request_id}:platform"}
        return held.get(f"{request_id}:platform")

    # the message's compact JSON (45 bytes), 4 for the message, 3 priming the reply (pool.gateway)
    prompt_estimate = 52
    assert held_for(platform_key.secret) == token_cost(prompt_estimate, INPUT_PRICE) + token_cost(1000, 2_000_000_000)
    assert held_for(platform_key.secret) == token_cost(prompt_estimate, INPUT_PRICE) + token_cost(1000, 2_000_000_000)
    ProviderModel.objects.filter(name=MODEL).update(output_price=20_000_000_000)  # ×10
    assert held_for(platform_key.secret) == token_cost(prompt_estimate, INPUT_PRICE) + token_cost(1000, 20_000_000_000)
    own = world.key(owner=alice.user, byok=True)
    assert held_for(own.secret) is None  # BYOK within the free tier reserves nothing
    assert not BalanceHold.objects.exists()
    assert_ledger_clean()


def test_a_deactivated_members_keys_leave_every_route_at_once(world):
    # given a member whose donated key serves the pool and whose listed key serves the platform route
    banned = world.member()
    donated = world.key(owner=banned.user, donate_to_pool=True)
    listed = world.key(owner=banned.user, exchange=True)
    alice = world.member()
    world.key(owner=alice.user, donate_to_pool=True)  # alice's pass to the pool
    client = alice.client(world.url)
    pool_answer = client.chat.completions.with_raw_response.create(model=POOL_MODEL_ID, messages=PROMPT)
    platform_answer = client.chat.completions.with_raw_response.create(model=MODEL_ID, messages=PROMPT)
    assert (pool_answer.headers["x-headroom-route"], platform_answer.headers["x-headroom-route"]) == ("pool", "exchange")

    # when an operator deactivates the member (the admin's "active" box)
    banned.user.is_active = False
    banned.user.save(update_fields=["is_active"])
    platform_key = world.key()

    # then neither key serves again: the pool has no other donor, the platform route takes a platform key
    with pytest.raises(APIStatusError) as raised:
        client.chat.completions.create(model=POOL_MODEL_ID, messages=PROMPT)
    assert (raised.value.status_code, raised.value.body["code"]) == (503, "no_key_available")
    for _ in range(3):
        answer = client.chat.completions.with_raw_response.create(model=MODEL_ID, messages=PROMPT)
        assert answer.headers["x-headroom-route"] == "platform"
    served = set(RequestRecord.objects.filter(outcome="succeeded").values_list("provider_key_id", flat=True))
    assert served == {donated.pk, listed.pk, platform_key.pk}
    assert RequestRecord.objects.filter(provider_key_id__in=[donated.pk, listed.pk]).count() == 2
    assert_ledger_clean()
