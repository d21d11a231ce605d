"""Only key-level failures count against a shared key (README "Money integrity"): an error about the
request (too large for the key's per-minute budget, beyond the model's context) never pauses or
exhausts a platform, pool or exchange key. One case per provider family and error kind, each family's
documented body played by the fake provider (tests/fakeprovider/dialects.py cites the sources)."""

import pytest
from django.conf import settings
from openai import APIStatusError

from keys.models import ProviderKey
from pool.models import RequestRecord
from pool.upstream_errors import Blame, upstream_error_blame
from tests.fakeprovider.dialects import DIALECTS
from tests.pool.conftest import MODEL, PROMPT, PROVIDER
from tests.pool.helpers import SIGNUP, assert_ledger_clean, main

MODEL_ID = f"{PROVIDER}/{MODEL}"
POOL_MODEL_ID = f"{PROVIDER}-pool/{MODEL}"
Status = ProviderKey.Status

# What each family's kind means for the key (Gemini cannot tell its quota from its rate limit: a pause).
EXPECTED = {"request_too_large": Blame.REQUEST, "context_length": Blame.REQUEST, "rate_limit": Blame.RATE_LIMITED,
            "insufficient_quota": Blame.KEY_FAILED, "overloaded": Blame.PROVIDER}
EXCEPTIONS = {("gemini", "insufficient_quota"): Blame.RATE_LIMITED}
CASES = [(name, kind) for name, dialect in DIALECTS.items() for kind in dialect.errors]


def _expected(dialect: str, kind: str) -> Blame:
    return EXCEPTIONS.get((dialect, kind), EXPECTED[kind])


@pytest.mark.parametrize(("dialect", "kind"), CASES, ids=[f"{d}-{k}" for d, k in CASES])
def test_each_familys_error_blames_what_it_is_about(world, dialect, kind):
    key = world.key()
    world.fake.script(key.secret, dialect=dialect, error=kind)
    alice = world.member()
    client = alice.client(world.url)
    tries = max(settings.HEADROOM_PAUSE_AFTER_429S, settings.HEADROOM_EXHAUST_AFTER_FAILURES)

    statuses = []
    for _ in range(tries):
        with pytest.raises(APIStatusError) as raised:
            client.chat.completions.create(model=MODEL_ID, messages=PROMPT)
        statuses.append((raised.value.status_code, raised.value.body["code"]))
        assert key.secret[-4:] not in raised.value.response.text  # the provider's body is never relayed

    key.refresh_from_db()
    blame = _expected(dialect, kind)
    if blame == Blame.REQUEST:
        # the key is untouched, and the member is told it is the request, not a busy gateway
        assert (key.status, key.consecutive_429s, key.failure_count) == (Status.ACTIVE, 0, 0)
        assert set(statuses) == {(400, "upstream_rejected")}
    elif blame == Blame.RATE_LIMITED:
        assert key.status == Status.PAUSED
    elif blame == Blame.KEY_FAILED:
        assert key.status == Status.EXHAUSTED
    else:
        assert (key.status, key.consecutive_429s, key.failure_count) == (Status.ACTIVE, 0, 0)
    assert main(alice.user) == SIGNUP  # a failed request costs nothing
    assert RequestRecord.objects.filter(outcome="failed").count() == tries
    assert_ledger_clean()


def test_an_oversized_request_pauses_neither_a_pool_nor_an_exchange_key(world):
    donor, seller = world.member(), world.member()
    pooled = world.key(owner=donor.user, donate_to_pool=True)
    listed = world.key(owner=seller.user, exchange=True)
    for key in (pooled, listed):
        world.fake.script(key.secret, dialect="openai", error="request_too_large")
    pooler = world.member()
    world.key(owner=pooler.user, donate_to_pool=True)  # the pool gate: pooler donates too
    client = pooler.client(world.url)

    for model in [POOL_MODEL_ID] * 4 + [MODEL_ID] * 4:
        with pytest.raises(APIStatusError) as raised:
            client.chat.completions.create(model=model, messages=PROMPT, max_tokens=50)
        assert raised.value.status_code == 400

    for key in (pooled, listed):
        key.refresh_from_db()
        assert (key.status, key.consecutive_429s, key.failure_count) == (Status.ACTIVE, 0, 0)
    assert_ledger_clean()


@pytest.mark.parametrize(
    ("status", "body", "blame"),
    [
        (429, b'{"error": {"message": "Request too large for gpt-4o", "type": "tokens"}}', Blame.REQUEST),
        (429, b'{"error": {"message": "Rate limit reached", "type": "requests"}}', Blame.RATE_LIMITED),
        (429, b"not json", Blame.RATE_LIMITED),
        (429, b"", Blame.RATE_LIMITED),
        (400, b"[]", Blame.REQUEST),
        (400, b'{"error": "a string"}', Blame.REQUEST),
        (402, b"", Blame.KEY_FAILED),
        (401, b"", Blame.KEY_FAILED),
        (529, b"", Blame.PROVIDER),
        (408, b"", Blame.PROVIDER),
    ],
)
def test_bodies_of_any_shape_are_read_without_error(status, body, blame):
    assert upstream_error_blame(status, body) == blame
