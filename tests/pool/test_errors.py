"""Every refusal the gateway makes, in OpenAI's error shape, and nothing dispatched or charged for it."""

import socket

import httpx
import pytest
from openai import APIStatusError

from keys.models import Provider
from pool.models import RequestRecord
from tests.pool.conftest import MODEL, PROMPT, PROVIDER
from tests.pool.helpers import SIGNUP, assert_ledger_clean, main, spend_all

MODEL_ID = f"{PROVIDER}/{MODEL}"
POOL_MODEL_ID = f"{PROVIDER}-pool/{MODEL}"


def _post(world, member, body=None, *, content=None, headers=None, path="/v1/chat/completions"):
    sent = {"Authorization": f"Bearer {member.api_key}"} if member else {}
    sent.update(headers or {})
    return httpx.post(f"{world.url}{path}", json=body, content=content, headers=sent, timeout=10)


def _assert_error(response, status, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"model": MODEL_ID, "messages": PROMPT, "api_base": "http://169.254.169.254"}, "forbidden_field", "api_base"),
        ({"model": MODEL_ID, "messages": PROMPT, "base_url": "http://x"}, "forbidden_field", "base_url"),
        ({"model": MODEL_ID, "messages": PROMPT, "api_key": "sk-other"}, "forbidden_field", "api_key"),
        ({"model": MODEL_ID, "messages": PROMPT, "headers": {"x": "y"}}, "forbidden_field", "headers"),
        ({"model": MODEL_ID, "messages": PROMPT, "extra_headers": {}}, "forbidden_field", "extra_headers"),
        ({"messages": PROMPT}, "model_required", "model"),
        ({"model": MODEL_ID}, "invalid_request", "messages"),
        ({"model": MODEL_ID, "messages": []}, "invalid_request", "messages"),
        ({"model": MODEL_ID, "messages": PROMPT, "stream": "yes"}, "invalid_request", "stream"),
        ({"model": MODEL_ID, "messages": PROMPT, "max_tokens": 0}, "invalid_request", "max_tokens"),
        ({"model": MODEL_ID, "messages": PROMPT, "key_pool_mode": "all"}, "invalid_request", "key_pool_mode"),
    ],
)
def test_bad_fields_are_400(world, body, code, param):
    world.key()
    alice = world.member()
    response = _post(world, alice, body)
    _assert_error(response, 400, code)
    assert response.json()["error"]["param"] == param
    assert world.fake.count(path="/chat/completions") == 0


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_malformed_json_is_400(world, content):
    alice = world.member()
    response = _post(world, alice, content=content, headers={"Content-Type": "application/json"})
    _assert_error(response, 400, "invalid_json")


def test_non_json_content_type_is_415(world):
    alice = world.member()
    response = _post(world, alice, content=b"model=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    _assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", "Bearer hr-nope", "Basic abc", "Bearer " + "hr-" + "x" * 10_000, "Bearer sk-" + "a" * 48],
)
def test_bad_credentials_are_401(world, authorization):
    response = httpx.post(
        f"{world.url}/v1/chat/completions", json={"model": MODEL_ID, "messages": PROMPT},
        headers={"Authorization": authorization} if authorization else {}, timeout=10,
    )
    _assert_error(response, 401, "invalid_api_key")


def test_revoked_key_is_401(world):
    from accounts.models import ApiKey
    from accounts.services import api_key_revoke

    alice = world.member()
    api_key_revoke(api_key=ApiKey.objects.get(user=alice.user))
    with pytest.raises(APIStatusError) as raised:
        alice.client(world.url).models.list()
    assert raised.value.status_code == 401


def test_unknown_or_unpriced_model_is_404(world):
    from keys.models import ProviderModel

    ProviderModel.objects.create(provider=world.provider, name="unpriced")
    alice = world.member()
    for model in ("fakeai/nope", "nope/tiny", "tiny", f"{PROVIDER}/unpriced"):
        _assert_error(_post(world, alice, {"model": model, "messages": PROMPT}), 404, "model_not_found")


def test_pool_gate_is_403_and_says_how_to_join(world):
    bob = world.member()
    world.key(owner=bob.user, donate_to_pool=True)
    alice = world.member()  # no donated key of her own
    response = _post(world, alice, {"model": POOL_MODEL_ID, "messages": PROMPT})
    _assert_error(response, 403, "pool_membership_required")
    assert "donate_to_pool" in response.json()["error"]["message"]


def test_pool_on_an_uncleared_provider_is_403(world):
    alice = world.member()
    world.key(owner=alice.user, donate_to_pool=True)
    Provider.objects.filter(pk=world.provider.pk).update(pool_clearance=Provider.PoolClearance.PENDING)
    _assert_error(_post(world, alice, {"model": POOL_MODEL_ID, "messages": PROMPT}), 403, "pool_provider_not_cleared")


def test_a_balance_that_cannot_cover_the_worst_case_is_402(world):
    world.key()
    alice = world.member()
    spend_all(alice.user)
    response = _post(world, alice, {"model": MODEL_ID, "messages": PROMPT, "max_tokens": 10})
    _assert_error(response, 402, "insufficient_balance")
    assert world.fake.count(path="/chat/completions") == 0
    assert_ledger_clean()


def test_monthly_limit_is_402(world):
    world.key()
    # $0.0001: the prompt's worst case (52 tokens, $0.000052) plus 20 completion tokens ($0.00004) fits
    # once; the second request is capped to what the limit leaves; the third cannot pay for one token.
    alice = world.member(monthly_limit=100_000)
    ok = _post(world, alice, {"model": MODEL_ID, "messages": PROMPT, "max_tokens": 20})
    assert ok.status_code == 200  # charged 3 × $1/M + 20 × $2/M = $0.000043
    capped = _post(world, alice, {"model": MODEL_ID, "messages": PROMPT, "max_tokens": 20})
    assert capped.status_code == 200
    assert world.fake.requests[-1].json["max_tokens"] == (100_000 - 43_000 - 52_000) // 2_000  # 2 tokens
    third = _post(world, alice, {"model": MODEL_ID, "messages": PROMPT, "max_tokens": 20})
    _assert_error(third, 402, "monthly_limit_reached")


def test_body_over_the_limit_is_413_declared_or_chunked(world, settings):
    settings.HEADROOM_MAX_BODY_BYTES = 1_000
    alice = world.member()
    big = {"model": MODEL_ID, "messages": [{"role": "user", "content": "x" * 2_000}]}
    _assert_error(_post(world, alice, big), 413, "request_too_large")

    def chunks():
        yield b'{"model": "' + MODEL_ID.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 200
        yield b'"}]}'

    chunked = httpx.post(
        f"{world.url}/v1/chat/completions", content=chunks(), timeout=10,
        headers={"Authorization": f"Bearer {alice.api_key}", "Content-Type": "application/json"},
    )
    _assert_error(chunked, 413, "request_too_large")


def test_understated_content_length_never_lets_more_through(world, settings):
    settings.HEADROOM_MAX_BODY_BYTES = 1_000
    world.key()
    alice = world.member()
    host, port = world.url.removeprefix("http://").split(":")
    body = b'{"model": "' + MODEL_ID.encode() + b'", "messages": [{"role":"user","content":"' + b"z" * 5_000 + b'"}]}'
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {alice.api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: 20\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        reply = b""
        while chunk := sock.recv(65_536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert status in (400, 413)  # only the 20 declared bytes are read: never a body past the limit
    assert world.fake.count(path="/chat/completions") == 0
    assert RequestRecord.objects.count() == 0


def test_own_rate_limit_is_429(world, settings):
    settings.HEADROOM_RATE_LIMIT_PER_MINUTE = 2
    alice = world.member()
    client = alice.client(world.url)
    client.models.list()
    client.models.list()
    with pytest.raises(APIStatusError) as raised:
        client.models.list()
    assert raised.value.status_code == 429
    assert raised.value.body["code"] == "rate_limited"
    assert 0 < int(raised.value.response.headers["retry-after"]) <= 60


def test_unknown_endpoint_and_method(world):
    alice = world.member()
    _assert_error(_post(world, alice, {}, path="/v1/completions"), 404, "not_found")
    response = httpx.get(f"{world.url}/v1/chat/completions", headers={"Authorization": f"Bearer {alice.api_key}"})
    _assert_error(response, 405, "method_not_allowed")
    assert main(alice.user) == SIGNUP


def test_the_rate_limit_fails_open_when_the_cache_is_down(world, settings):
    settings.HEADROOM_RATE_LIMIT_PER_MINUTE = 1
    # A Redis cache that is not there (nothing listens on port 1): the limiter cannot count.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:1/0"}}
    alice = world.member()
    client = alice.client(world.url)
    client.models.list()
    client.models.list()  # over the limit, but the limiter cannot count: served
