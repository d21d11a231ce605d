"""Reading gateway usage through the management API: own requests, key stats, the public pool."""

from decimal import Decimal

import openai
import pytest
from rest_framework.test import APIClient

from core.money import percent_of, usd_str
from tests.pool.conftest import COST, MODEL, PROMPT, PROVIDER

POOL_MODEL_ID = f"{PROVIDER}-pool/{MODEL}"
READS = ["gateway", "read"]  # the members call /v1 and read the management API with the same key


def _api(member) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {member.api_key}")
    return client


def test_usage_lists_only_the_callers_requests(world):
    world.key()
    alice, bob = world.member(scopes=READS), world.member(scopes=READS)
    alice.client(world.url).chat.completions.create(model=f"{PROVIDER}/{MODEL}", messages=PROMPT)
    bob.client(world.url).chat.completions.create(model=f"{PROVIDER}/{MODEL}", messages=PROMPT)

    rows = _api(alice).get("/api/v1/usage").json()
    assert len(rows) == 1
    assert rows[0]["route"] == "platform"
    assert rows[0]["charged"] == usd_str(COST)
    assert rows[0]["provider"] == PROVIDER
    assert "messages" not in rows[0] and "requester" not in rows[0]
    assert _api(alice).get("/api/v1/usage?limit=x").status_code == 400


def test_donor_sees_aggregates_only_and_the_public_pool_listing(world):
    alice = world.member(scopes=READS)
    world.key(owner=alice.user, donate_to_pool=True)
    bob = world.member(scopes=READS)
    bob_key = world.key(owner=bob.user, donate_to_pool=True)
    for _ in range(2):
        alice.client(world.url).chat.completions.create(model=POOL_MODEL_ID, messages=PROMPT)

    stats = _api(bob).get(f"/api/v1/keys/{bob_key.pk}/stats")
    assert stats.status_code == 200
    body = stats.json()
    reward = percent_of(COST, Decimal(5))
    assert body["totals"]["requests_served"] == 2
    assert body["totals"]["credits_earned"] == usd_str(2 * reward)
    assert body["daily"][0]["requests"] == 2
    assert alice.user.email not in stats.content.decode()
    # someone else's key is not found
    assert _api(alice).get(f"/api/v1/keys/{bob_key.pk}/stats").status_code == 404

    listing = APIClient().get("/api/v1/pool")
    assert listing.status_code == 200
    row = next(p for p in listing.json()["providers"] if p["provider"] == PROVIDER)
    assert row["active_keys"] == 2
    assert row["requests_served"] == 2
    assert bob.user.email not in listing.content.decode()


def test_a_key_without_the_gateway_scope_cannot_call_v1(world):
    world.key()
    reader = world.member(scopes=["read"])
    with pytest.raises(openai.AuthenticationError) as refused:
        reader.client(world.url).chat.completions.create(model=f"{PROVIDER}/{MODEL}", messages=PROMPT)
    assert "`gateway` scope" in refused.value.message
    assert not [r for r in world.fake.requests if r.path.endswith("/chat/completions")]
