"""The gateway under concurrent load on real PostgreSQL: fair LRU, no self-routing, one pause."""

import asyncio
from collections import Counter

from billing.models import BalanceHold
from core.money import token_cost
from keys.models import ProviderKey, ProviderKeyLease, ProviderKeyTransition, ProviderModel
from pool.models import RequestRecord
from tests.pool.conftest import COST, INPUT_PRICE, MODEL, OUTPUT_PRICE, PROMPT, PROVIDER
from tests.pool.helpers import SIGNUP, assert_ledger_clean, burst, main


POOL_MODEL_ID = f"{PROVIDER}-pool/{MODEL}"
POOL_ASK = {"model": POOL_MODEL_ID, "messages": PROMPT}
DIRECT_ASK = {"model": f"{PROVIDER}/{MODEL}", "messages": PROMPT}


def test_two_hundred_concurrent_pool_requests_share_three_keys_fairly(world):
    requester = world.member()
    own_key = world.key(owner=requester.user, donate_to_pool=True)  # passes the gate; must never serve them
    donors = [world.member() for _ in range(3)]
    donor_keys = [world.key(owner=d.user, donate_to_pool=True) for d in donors]

    results = asyncio.run(burst(requester.api_key, world.url, 200, lambda i: POOL_ASK))

    failures = [r for r in results if isinstance(r, Exception)]
    assert failures == []
    used = Counter(RequestRecord.objects.values_list("provider_key_id", flat=True))
    assert own_key.pk not in used  # zero self-matches
    assert set(used) == {k.pk for k in donor_keys}
    upstream_calls = {k.pk: world.fake.count(key=k.secret, path="/chat/completions") for k in donor_keys}
    assert upstream_calls == dict(used)  # one upstream call per request: no retries skewed the count
    assert all(66 <= used[k.pk] <= 67 for k in donor_keys), used
    assert world.fake.count(key=own_key.secret, path="/chat/completions") == 0
    assert main(requester.user) == SIGNUP
    assert not ProviderKeyLease.objects.exists()  # every lease ended with its request
    assert_ledger_clean()


def test_concurrent_429s_pause_the_key_exactly_once(world, settings):
    key = world.key()
    world.fake.script(key.secret, status=429, retry_after=5)
    alice = world.member()

    results = asyncio.run(burst(alice.api_key, world.url, 12, lambda i: DIRECT_ASK))

    assert all(getattr(r, "status_code", None) in (429, 503) for r in results), results
    key.refresh_from_db()
    assert key.status == ProviderKey.Status.PAUSED
    assert ProviderKeyTransition.objects.filter(key=key, to_status=ProviderKey.Status.PAUSED).count() == 1
    assert_ledger_clean()


def test_concurrent_requests_never_reserve_more_than_the_balance(world):
    key = world.key()
    world.fake.script(key.secret, first_byte_delay=1.0)  # every request in flight at once
    alice = world.member()  # $2.00
    ProviderModel.objects.filter(name=MODEL).update(max_output_tokens=150_000)  # the cap asked for is allowed
    # worst case: 52 prompt tokens (the estimate: 45 bytes of JSON, 4 for the message, 3 priming the reply)
    # × $1/M + 150,000 × $2/M = $0.300052; six fit in $2.00. A request planned once those six are held
    # may still be served with the smaller cap that the rest ($0.199688) affords.
    results = asyncio.run(burst(alice.api_key, world.url, 20, lambda i: {**DIRECT_ASK, "max_tokens": 150_000}))

    answered = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    caps = [r.json["max_tokens"] for r in world.fake.requests if r.path.endswith("/chat/completions")]
    assert len(caps) == len(answered) and caps.count(150_000) == 6
    assert sum(token_cost(52, INPUT_PRICE) + token_cost(cap, OUTPUT_PRICE) for cap in caps) <= SIGNUP
    assert {(r.status_code, r.body["code"]) for r in refused} == {(402, "insufficient_balance")}
    assert main(alice.user) == SIGNUP - len(answered) * COST  # charged what was delivered, not what was held
    assert not BalanceHold.objects.exists()  # each released with its request
    assert_ledger_clean()



def test_a_burst_of_every_route_at_once_settles_each_request_as_if_alone(world):
    """Requests of different routes and members that share the gateway's statements (pool, BYOK,
    platform, exchange) each land exactly as they would one by one."""
    from decimal import Decimal

    from core.money import percent_of
    from exchange.selectors import payout_rate_resolve
    from tests.pool.conftest import MODEL
    from tests.pool.helpers import frozen

    pooler, donor, byok_user, payer, seller = (world.member() for _ in range(5))
    world.key(owner=pooler.user, donate_to_pool=True)  # opens the pool to them
    world.key(owner=donor.user, donate_to_pool=True)
    world.key(owner=byok_user.user, byok=True)
    world.key()  # a platform key
    world.key(owner=seller.user, exchange=True)
    n = 6

    async def everyone():
        return await asyncio.gather(
            burst(pooler.api_key, world.url, n, lambda i: POOL_ASK),
            burst(byok_user.api_key, world.url, n, lambda i: DIRECT_ASK),
            burst(payer.api_key, world.url, n, lambda i: DIRECT_ASK),
        )

    results = [r for burst in asyncio.run(everyone()) for r in burst]

    assert [r for r in results if isinstance(r, Exception)] == []
    routes = Counter(RequestRecord.objects.values_list("requester_id", "route"))
    assert routes[(pooler.user.pk, "pool")] == n
    assert routes[(byok_user.user.pk, "byok")] == n
    assert routes[(payer.user.pk, "platform")] + routes[(payer.user.pk, "exchange")] == n
    assert main(pooler.user) == SIGNUP and main(byok_user.user) == SIGNUP  # pool and BYOK: not charged
    assert main(payer.user) == SIGNUP - n * COST
    reward = percent_of(COST, Decimal(5))
    assert main(donor.user) == SIGNUP + n * reward
    rate = payout_rate_resolve(user=seller.user, provider=world.provider, task="chat").percent
    assert frozen(seller.user) == routes[(payer.user.pk, "exchange")] * percent_of(COST, rate)
    assert not ProviderKeyLease.objects.exists()
    assert not BalanceHold.objects.exists()
    assert_ledger_clean()
