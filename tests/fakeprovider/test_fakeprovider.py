"""The fake provider speaks the real wire formats, over real HTTP, to httpx and the official openai SDK.

No Django and no database: these tests exercise only the fixture itself.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keys.balance import (
    BalanceParseError,
    BalanceReading,
    FollowUpRequired,
    parse_balance,
)
from tests.fakeprovider import DIALECTS, Billed, FakeProvider, Totals, billing, dialects, mask_key

KEY = "sk-test-abcdEFGH-ijklMNOP-1234"
OTHER = "sk-test-zyxwVUTS-rqpoNMLK-9876"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say three words"}]
PROMPT_TOKENS = 5  # "be brief" + "say three words"


@pytest.fixture(scope="module")
def server():
    with FakeProvider(chunks=20) as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def http(fake):
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as client:
        yield client


@pytest.fixture
def sdk(fake):
    with openai.OpenAI(base_url=f"{fake.url}/v1", api_key=KEY, max_retries=0, timeout=10) as client:
        yield client


def _events(raw: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    assert raw.endswith("\n\n")
    return [block.removeprefix("data: ") for block in raw.split("\n\n") if block]


def _chat(
    client: httpx.Client, path: str = "/v1/chat/completions", *, headers: dict | None = None, **extra
) -> httpx.Response:
    """POST a chat completion; ``extra`` goes into the JSON body."""
    return client.post(path, json={"model": "fake-model", "messages": MESSAGES, **extra}, headers=headers)


# --- chat completions -------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "", "/api/v1", "/api/paas/v4", "/v1beta/openai"])
def test_chat_completion_matches_openai_shape_under_any_prefix(http, prefix):
    response = _chat(http, f"{prefix}/chat/completions")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "fake-model"
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == " ".join(f"tok{i}" for i in range(20))
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 20, "total_tokens": 25}


def test_model_is_echoed_and_tokens_are_deterministic(http):
    a = http.post("/v1/chat/completions", json={"model": "groq/llama", "messages": MESSAGES}).json()
    b = http.post("/v1/chat/completions", json={"model": "groq/llama", "messages": MESSAGES}).json()
    assert a["model"] == b["model"] == "groq/llama"
    assert a["usage"] == b["usage"]
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


def test_prompt_tokens_count_words_including_content_parts_with_minimum_one(http):
    def prompt_tokens(messages: list) -> int:
        body = http.post("/v1/chat/completions", json={"model": "m", "messages": messages}).json()
        return body["usage"]["prompt_tokens"]

    parts = [{"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "image_url"}]}]
    assert prompt_tokens(parts) == 2
    assert prompt_tokens([{"role": "user", "content": ""}]) == 1


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_below_chunks_truncates_with_finish_length(http, field):
    body = _chat(http, **{field: 3}).json()
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def test_chunks_setting_controls_completion_tokens(fake, http):
    fake.chunks = 4
    assert _chat(http).json()["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("include_usage", [True, False, None])
def test_stream_is_openai_sse(http, include_usage):
    extra = {"stream": True}
    if include_usage is not None:
        extra["stream_options"] = {"include_usage": include_usage}
    response = _chat(http, **extra)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert {c["model"] for c in chunks} == {"fake-model"}
    if include_usage:
        *content, finish, usage = chunks
        assert usage["choices"] == []
        assert usage["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 20, "total_tokens": 25}
        assert all(c["usage"] is None for c in content + [finish])
    else:
        *content, finish = chunks
        assert all("usage" not in c for c in chunks)
    assert len(content) == 20
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == " ".join(f"tok{i}" for i in range(20))
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["choices"][0]["delta"] == {}


def test_stream_respects_max_tokens(http):
    events = _events(_chat(http, stream=True, max_tokens=2, stream_options={"include_usage": True}).text)
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 2
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_bad_requests_get_openai_errors(http):
    bad_json = http.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["type"] == "invalid_request_error"
    no_messages = http.post("/v1/chat/completions", json={"model": "m"})
    assert no_messages.status_code == 400
    assert no_messages.json()["error"]["param"] == "messages"
    unknown = http.get("/v1/nope")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_url"


# --- the official openai SDK ---------------------------------------------------------------------------


def test_sdk_chat_completion(sdk):
    completion = sdk.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert completion.choices[0].message.content.startswith("tok0 tok1")
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    assert completion.usage.completion_tokens == 20
    assert completion.model == "fake-model"


def test_sdk_stream_with_usage(sdk):
    stream = sdk.chat.completions.create(
        model="fake-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(f"tok{i}" for i in range(20))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == PROMPT_TOKENS + 20


def test_sdk_stream_without_usage(sdk):
    chunks = list(sdk.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_async_sdk_stream(fake):
    async with openai.AsyncOpenAI(base_url=f"{fake.url}/v1", api_key=KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="fake-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    assert chunks[-1].usage.completion_tokens == 20


def test_sdk_embeddings_default_base64_and_float(sdk):
    default = sdk.embeddings.create(model="fake-embedding", input=["hello world", "bye"])
    floats = sdk.embeddings.create(model="fake-embedding", input=["hello world", "bye"], encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert len(default.data[0].embedding) == 8
    assert default.data[0].embedding != default.data[1].embedding
    assert default.usage.prompt_tokens == default.usage.total_tokens == 3
    assert default.model == "fake-embedding"


def test_embeddings_shapes_over_raw_http(http):
    body = http.post("/v1/embeddings", json={"model": "e", "input": "a b c", "dimensions": 4}).json()
    assert body["object"] == "list"
    (item,) = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0 and len(item["embedding"]) == 4
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    encoded = http.post("/v1/embeddings", json={"model": "e", "input": "a b c", "dimensions": 4,
                                                "encoding_format": "base64"}).json()
    decoded = list(struct.unpack("<4f", base64.b64decode(encoded["data"][0]["embedding"])))
    assert decoded == item["embedding"]
    assert http.post("/v1/embeddings", json={"model": "e"}).status_code == 400


def test_sdk_models_list(sdk):
    assert [m.id for m in sdk.models.list()] == ["fake-model", "fake-embedding"]


# --- auth and faults -----------------------------------------------------------------------------------


def test_any_key_is_accepted_by_default_and_missing_auth_is_401(fake):
    with httpx.Client(base_url=fake.url) as client:
        ok = _chat(client, headers={"Authorization": "Bearer any-key-at-all"})
        missing = client.post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert ok.status_code == 200
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"


def test_401_echoes_a_key_fragment_like_openai(fake, sdk):
    fake.script(KEY, status=401)
    with pytest.raises(openai.AuthenticationError) as excinfo:
        sdk.chat.completions.create(model="m", messages=MESSAGES)
    assert excinfo.value.status_code == 401
    assert excinfo.value.code == "invalid_api_key"
    assert mask_key(KEY) == "sk-te****1234"
    assert "Incorrect API key provided: sk-te****1234" in excinfo.value.message


def test_429_carries_retry_after(fake, http, sdk):
    fake.script(KEY, status=429, retry_after=30)
    response = _chat(http)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "30"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert mask_key(KEY) in response.json()["error"]["message"]
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="m", messages=MESSAGES)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors(fake, http, sdk, status):
    fake.script(KEY, status=status)
    response = _chat(http)
    assert response.status_code == status
    assert response.json()["error"]["type"] == "server_error"
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model="m", messages=MESSAGES)


def test_faults_are_per_key(fake, http):
    fake.script(OTHER, status=500)
    assert _chat(http).status_code == 200
    assert _chat(http, headers={"Authorization": f"Bearer {OTHER}"}).status_code == 500


def test_times_limits_a_fault_to_the_next_n_requests(fake, http):
    fake.script(KEY, status=429, retry_after=1, times=2)
    assert [_chat(http).status_code for _ in range(4)] == [429, 429, 200, 200]


def test_times_under_concurrency_is_exact(fake):
    fake.script(KEY, status=503, times=7)
    statuses: list[int] = []
    lock = threading.Lock()

    def worker():
        with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
            for _ in range(5):
                code = _chat(client).status_code
                with lock:
                    statuses.append(code)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses).count(503) == 7
    assert len(statuses) == 40
    assert fake.count(key=KEY) == 40


def test_first_byte_delay_and_global_delay(fake, http):
    fake.script(KEY, first_byte_delay=0.3, times=1)
    started = time.monotonic()
    assert _chat(http).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    _chat(http)
    assert time.monotonic() - started < 0.3
    fake.delay = 0.2
    started = time.monotonic()
    _chat(http)
    assert time.monotonic() - started >= 0.2


def test_first_byte_delay_trips_a_client_read_timeout(fake):
    fake.script(KEY, first_byte_delay=2.0, times=1)
    with openai.OpenAI(base_url=f"{fake.url}/v1", api_key=KEY, max_retries=0, timeout=0.3) as client:
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="m", messages=MESSAGES)


def test_cut_stream_drops_the_connection_without_done(fake, http):
    fake.script(KEY, cut_stream_after=5)
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with http.stream("POST", "/v1/chat/completions",
                         json={"model": "m", "messages": MESSAGES, "stream": True}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line:
                    received.append(line)
    assert len(received) == 5
    assert all(line != "data: [DONE]" for line in received)
    # non-streaming requests are not affected by a stream cut
    assert _chat(http).status_code == 200


def test_cut_stream_through_the_sdk(fake, sdk):
    fake.script(KEY, cut_stream_after=3, times=1)
    got = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        for chunk in sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True):
            got.append(chunk)
    assert len(got) == 3
    assert len(list(sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True))) == 21


def test_chunk_delay_spaces_out_the_stream(fake, http):
    fake.chunks, fake.chunk_delay = 3, 0.1
    started = time.monotonic()
    assert _events(_chat(http, stream=True).text)[-1] == "[DONE]"
    assert time.monotonic() - started >= 0.3


# --- balance endpoints ---------------------------------------------------------------------------------

BALANCE_CASES = [
    ("deepseek", "/user/balance"),
    ("openrouter", "/api/v1/key"),
    ("openrouter_credits", "/api/v1/credits"),
    ("moonshot", "/v1/users/me/balance"),
    ("siliconflow", "/v1/user/info"),
]


def test_deepseek_balance_shape(fake, http):
    fake.script(KEY, balance=Decimal("12.34"), currency="CNY")
    body = http.get("/user/balance").json()
    assert body == {
        "is_available": True,
        "balance_infos": [
            {"currency": "CNY", "total_balance": "12.34", "granted_balance": "0.00", "topped_up_balance": "12.34"}
        ],
    }


def test_openrouter_key_and_credits_shapes(fake, http):
    fake.script(KEY, balance=Decimal("12.34"))
    data = http.get("/api/v1/key").json()["data"]
    assert data["limit"] == data["limit_remaining"] == 12.34
    assert data["usage"] == 0.0
    assert data["is_free_tier"] is False
    assert isinstance(data["label"], str)
    credits = http.get("/api/v1/credits").json()["data"]
    assert set(credits) == {"total_credits", "total_usage"}


def test_moonshot_balance_shape(fake, http):
    fake.script(KEY, balance=Decimal("12.34"))
    body = http.get("/v1/users/me/balance").json()
    assert body["code"] == 0 and body["scode"] == "0x0" and body["status"] is True
    assert body["data"] == {"available_balance": 12.34, "voucher_balance": 0.0, "cash_balance": 12.34}


def test_siliconflow_user_info_shape(fake, http):
    fake.script(KEY, balance=Decimal("12.34"))
    body = http.get("/v1/user/info").json()
    assert (body["code"], body["message"], body["status"]) == (20000, "OK", True)
    assert body["data"]["totalBalance"] == "12.34"
    assert body["data"]["chargeBalance"] == "12.34"
    assert body["data"]["status"] == "normal"
    assert {"id", "name", "balance"} <= set(body["data"])


@pytest.mark.parametrize(("kind", "path"), BALANCE_CASES)
@pytest.mark.parametrize("amount", [Decimal("12.34"), Decimal("0.1"), Decimal("0.05")])
def test_every_balance_reply_round_trips_through_keys_balance(fake, http, kind, path, amount):
    # given a scripted balance, when the gateway's own parser reads the fake's reply, then it is exact
    fake.script(KEY, balance=amount)
    reading = parse_balance(kind, http.get(path).content, currency="USD")
    assert reading == BalanceReading(amount, "USD", True)


def test_default_balance_for_unscripted_keys(http):
    assert parse_balance("deepseek", http.get("/user/balance").content).amount == Decimal("100.00")


def test_deepseek_cny_vs_usd(fake, http):
    fake.script(KEY, balance=Decimal("70"), currency="CNY")
    assert parse_balance("deepseek", http.get("/user/balance").content) == BalanceReading(Decimal("70"), "CNY", True)
    fake.script(KEY, currency="USD")  # balance persists, currency changes
    assert parse_balance("deepseek", http.get("/user/balance").content) == BalanceReading(Decimal("70"), "USD", True)


def test_zero_balance_is_unavailable(fake, http):
    fake.script(KEY, balance=Decimal("0"))
    assert http.get("/user/balance").json()["is_available"] is False
    assert parse_balance("moonshot", http.get("/v1/users/me/balance").content).is_available is False


def test_openrouter_unlimited_key_needs_credits(fake, http):
    fake.script(KEY, balance=Decimal("7.5"), unlimited=True)
    data = http.get("/api/v1/key").json()["data"]
    assert data["limit"] is None and data["limit_remaining"] is None
    with pytest.raises(FollowUpRequired) as excinfo:
        parse_balance("openrouter", http.get("/api/v1/key").content)
    follow = http.get(f"/api/v1{excinfo.value.path}").content
    assert parse_balance(excinfo.value.kind, follow) == BalanceReading(Decimal("7.5"), "USD", True)


@pytest.mark.parametrize(("kind", "path"), BALANCE_CASES)
def test_malformed_balance(fake, http, kind, path):
    fake.script(KEY, malformed_balance=True, times=1)
    response = http.get(path)
    assert response.status_code == 200
    with pytest.raises(BalanceParseError):
        parse_balance(kind, response.content)
    parse_balance(kind, http.get(path).content)  # times=1: the next reply is fine again


def test_malformed_balance_does_not_consume_on_chat(fake, http):
    fake.script(KEY, malformed_balance=True, times=1)
    assert _chat(http).status_code == 200
    with pytest.raises(BalanceParseError):
        parse_balance("deepseek", http.get("/user/balance").content)


@pytest.mark.parametrize(
    ("path", "check"),
    [
        ("/user/balance", lambda b: b["error"]["type"] == "authentication_error"
         and "Authentication Fails, Your api key: sk-te****1234 is invalid" == b["error"]["message"]),
        ("/api/v1/key", lambda b: b["error"]["code"] == 401 and "User not found." in b["error"]["message"]),
        ("/api/v1/credits", lambda b: b["error"]["code"] == 401),
        ("/v1/users/me/balance", lambda b: b["error"]["type"] == "invalid_authentication_error"),
        ("/v1/user/info", lambda b: isinstance(b, str) and b.startswith("Api key is invalid")),
    ],
)
def test_invalid_key_on_balance_endpoints_uses_provider_style(fake, http, path, check):
    fake.script(KEY, status=401)
    response = http.get(path)
    assert response.status_code == 401
    assert check(response.json())
    assert mask_key(KEY) in response.text


def test_balance_endpoints_honour_429(fake, http):
    fake.script(KEY, status=429, retry_after=2.5, times=1)
    response = http.get("/user/balance")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2.5"


# --- observability -------------------------------------------------------------------------------------


def test_requests_are_recorded_and_counted(fake, http):
    _chat(http)
    http.get("/v1/models")
    http.get("/user/balance", headers={"Authorization": f"Bearer {OTHER}"})
    first, second, third = fake.requests
    assert (first.method, first.path, first.key) == ("POST", "/v1/chat/completions", KEY)
    assert first.json["messages"] == MESSAGES
    assert (second.method, second.json) == ("GET", None)
    assert third.key == OTHER
    assert first.time <= second.time <= third.time
    assert fake.count() == 3
    assert fake.count(key=KEY) == 2
    assert fake.count(path="/chat/completions") == 1
    assert fake.count(key=OTHER, path="/user/balance") == 1


def test_rejected_requests_are_recorded_too(fake, http):
    fake.script(KEY, status=401)
    _chat(http)
    assert fake.count(key=KEY) == 1


def test_reset_forgets_everything(fake, http):
    fake.script(KEY, status=500, balance=Decimal("1"))
    fake.delay, fake.chunks = 0.01, 2
    _chat(http)
    fake.reset()
    assert fake.requests == []
    assert (fake.delay, fake.chunks) == (0.0, 20)
    assert _chat(http).status_code == 200
    assert http.get("/user/balance").json()["balance_infos"][0]["total_balance"] == "100.00"


def test_clear_removes_a_keys_script(fake, http):
    fake.script(KEY, status=500)
    fake.clear(KEY)
    assert _chat(http).status_code == 200


def test_recording_can_be_disabled():
    with FakeProvider(record=False) as fake, httpx.Client(base_url=fake.url) as client:
        client.get("/v1/models", headers={"Authorization": "Bearer k"})
        assert fake.requests == []


# --- issue 12: billing exactly as a real provider would -------------------------------------------


def _billed(fake, *, wait_s: float = 2.0):
    """The ``Billed`` of the only chat completion served since the last reset. A stream's is set as its
    handler ends, which can be just after the client has read the last event: wait for it briefly."""
    (record,) = [r for r in fake.requests if r.path.endswith("/chat/completions")]
    deadline = time.monotonic() + wait_s
    while record.billed is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return record.billed


def _stream_chunks(response: httpx.Response) -> list[dict]:
    events = _events(response.text)
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


# dialects: which cap field a provider reads


def test_openai_dialect_reads_max_completion_tokens_before_max_tokens(fake, http):
    body = _chat(http, max_completion_tokens=1, max_tokens=7).json()
    assert body["usage"]["completion_tokens"] == 1
    billed = _billed(fake)
    assert (billed.cap, billed.cap_field, billed.dialect) == (1, "max_completion_tokens", "openai")
    fake.reset()
    assert _chat(http, max_tokens=7).json()["usage"]["completion_tokens"] == 7
    assert _billed(fake).cap_field == "max_tokens"


def test_max_tokens_only_dialect_ignores_max_completion_tokens(fake, http):
    # the issue-12 attack: a cap of 1 in the field this provider ignores, 2000 in the one it reads
    fake.script(KEY, dialect="max_tokens_only", billing="realistic")
    fake.set_model_limits("fake-model", max_output_tokens=3000)
    body = _chat(http, max_completion_tokens=1, max_tokens=2000).json()
    assert body["usage"]["completion_tokens"] == 2000
    assert body["choices"][0]["finish_reason"] == "length"
    assert (_billed(fake).cap, _billed(fake).cap_field) == (2000, "max_tokens")
    fake.reset()
    fake.script(KEY, dialect="max_tokens_only")  # friendly: only the cap field changes
    assert _chat(http, max_completion_tokens=1).json()["usage"]["completion_tokens"] == 20
    assert _billed(fake).cap_field is None


def test_realistic_key_without_cap_generates_to_the_model_limit(fake, http):
    fake.script(KEY, billing="realistic")
    fake.set_model_limits("fake-model", max_output_tokens=300)
    body = _chat(http).json()
    assert body["usage"]["completion_tokens"] == 300  # no cap sent: the expensive case
    assert body["choices"][0]["finish_reason"] == "length"
    assert (_billed(fake).cap, _billed(fake).cap_field) == (300, None)
    fake.reset()
    fake.script(KEY, billing="realistic")
    fake.set_model_limits("fake-model", max_output_tokens=300)
    assert _chat(http, max_tokens=5000).json()["usage"]["completion_tokens"] == 300  # bounded by the model
    assert _chat(http, max_tokens=12).json()["usage"]["completion_tokens"] == 12  # a cap is used in full
    for not_a_cap in (12.0, "12", None, True):  # only a JSON integer caps: anything else is the worst case
        assert _chat(http, max_tokens=not_a_cap).json()["usage"]["completion_tokens"] == 300
    other = _chat(http, headers={"Authorization": f"Bearer {OTHER}"}).json()
    assert other["usage"]["completion_tokens"] == 20  # other keys stay friendly


def test_server_wide_dialect_and_billing_defaults():
    with FakeProvider(dialect="max_tokens_only", billing="realistic", max_output_tokens=40) as fake, \
            httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        body = _chat(client, max_completion_tokens=3).json()
        assert body["usage"]["completion_tokens"] == 40
        assert _billed(fake).realistic is True
        fake.script(KEY, dialect="openai", billing="friendly")  # a key overrides the server's defaults
        assert _chat(client, max_completion_tokens=3).json()["usage"]["completion_tokens"] == 3


def test_scripting_rejects_unknown_names(fake):
    with pytest.raises(ValueError, match="unknown dialect"):
        fake.script(KEY, dialect="nope")
    with pytest.raises(ValueError, match="billing"):
        fake.script(KEY, billing="cheap")
    with pytest.raises(ValueError, match="answer segments"):
        fake.script(KEY, answer=[("poetry", 3)])
    with pytest.raises(ValueError, match="unknown error kind"):
        fake.script(KEY, error="gremlins")
    with pytest.raises(ValueError, match="no documented body"):
        fake.script(KEY, dialect="mistral", error="request_too_large")


# n choices


def test_n_choices_json_each_its_own_completion(fake, http):
    body = _chat(http, n=3, max_tokens=4).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == "tok0 tok1 tok2 tok3" for c in body["choices"])
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    assert body["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 12, "total_tokens": 17}
    assert (_billed(fake).n, _billed(fake).completion_tokens, _billed(fake).cap) == (3, 12, 4)


def test_n_choices_stream_interleaved_with_index(fake, http):
    fake.chunks = 5
    chunks = _stream_chunks(_chat(http, n=2, stream=True, stream_options={"include_usage": True}))
    usage = chunks.pop()
    assert usage["usage"]["completion_tokens"] == 10 and usage["choices"] == []
    deltas = [c["choices"][0] for c in chunks]
    assert [d["index"] for d in deltas[:4]] == [0, 1, 0, 1]
    for index in (0, 1):
        mine = [d for d in deltas if d["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert "".join(d["delta"].get("content", "") for d in mine) == "tok0 tok1 tok2 tok3 tok4"
        assert mine[-1]["finish_reason"] == "stop"
    assert _billed(fake).completion_tokens == 10 and _billed(fake).complete


def test_n_through_the_sdk(fake, sdk):
    completion = sdk.chat.completions.create(model="fake-model", messages=MESSAGES, n=4, max_tokens=2)
    assert len(completion.choices) == 4
    assert completion.usage.completion_tokens == 8
    stream = sdk.chat.completions.create(model="fake-model", messages=MESSAGES, n=2, max_tokens=3, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}
    assert chunks[-1].usage.completion_tokens == 6


@pytest.mark.parametrize("n", [0, 129, "2", 1.5, True])
def test_invalid_n_is_refused_like_openai(fake, http, n):
    response = _chat(http, n=n)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    assert _billed(fake) is None


# prompt tokens, counted as a real provider bills them at the high end


def _realistic_prompt(http, fake, **body) -> int:
    fake.script(KEY, billing="realistic")
    response = http.post("/v1/chat/completions", json={"model": "fake-model", "max_tokens": 1, **body})
    assert response.status_code == 200, response.text
    prompt = response.json()["usage"]["prompt_tokens"]
    assert prompt == billing.prompt_tokens({"model": "fake-model", "max_tokens": 1, **body})
    return prompt


def test_realistic_prompt_counts_bytes_roles_and_per_message_overhead(fake, http):
    # 3 (reply) + [3 + "system" + "be brief"] + [3 + "user" + "say three words"]
    assert _realistic_prompt(http, fake, messages=MESSAGES) == 3 + (3 + 6 + 8) + (3 + 4 + 15)
    cjk = [{"role": "user", "content": "你好，世界🙂"}]  # 5 CJK × 3 bytes + 4-byte emoji
    assert _realistic_prompt(http, fake, messages=cjk) == 3 + 3 + 4 + 19
    named = [{"role": "user", "name": "ann", "content": "hi"}]
    assert _realistic_prompt(http, fake, messages=named) == 3 + 3 + 4 + (1 + 3) + 2
    parts = [{"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "text", "text": "é"}]}]
    assert _realistic_prompt(http, fake, messages=parts) == 3 + 3 + 4 + 7 + 2


def test_realistic_prompt_counts_tools_schemas_and_tool_calls(fake, http):
    base = _realistic_prompt(http, fake, messages=MESSAGES)
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Look a word up",
                                               "parameters": {"type": "object",
                                                              "properties": {"word": {"type": "string"}}}}}]
    tools_json = len(json.dumps(tools, separators=(",", ":"), ensure_ascii=False).encode())
    assert _realistic_prompt(http, fake, messages=MESSAGES, tools=tools) == base + tools_json + billing.TOOLS_OVERHEAD
    with_choice = _realistic_prompt(http, fake, messages=MESSAGES, tools=tools, tool_choice="required")
    assert with_choice == base + tools_json + billing.TOOLS_OVERHEAD + len("required")
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {
        "città": {"type": "string"}}}}}
    schema_json = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())
    assert _realistic_prompt(http, fake, messages=MESSAGES, response_format=schema) == base + schema_json
    calls = [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"word":"hi"}'}}]
    history = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": calls},
               {"role": "tool", "tool_call_id": "call_1", "content": "a greeting"}]
    calls_json = len(json.dumps(calls, separators=(",", ":"), ensure_ascii=False).encode())
    assert _realistic_prompt(http, fake, messages=history) == (
        base + (3 + len("assistant") + calls_json) + (3 + len("tool") + len("call_1") + len("a greeting")))


def test_realistic_prompt_bills_images_by_openais_rule_at_the_worst_case(fake, http):
    def image(detail: str | None, url: str = "https://example.com/cat.png") -> list:
        spec = {"url": url} if detail is None else {"url": url, "detail": detail}
        return [{"role": "user", "content": [{"type": "image_url", "image_url": spec}]}]

    overhead = 3 + 3 + 4
    assert _realistic_prompt(http, fake, messages=image("low")) == overhead + 85
    assert _realistic_prompt(http, fake, messages=image("high")) == overhead + 85 + 8 * 170
    assert _realistic_prompt(http, fake, messages=image(None)) == overhead + 1445  # auto = high
    data_url = "data:image/png;base64," + "A" * 50_000  # its base64 is not billed as text
    assert _realistic_prompt(http, fake, messages=image("auto", data_url)) == overhead + 1445


@given(body=st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]),
         "content": st.one_of(st.text(max_size=60), st.lists(st.fixed_dictionaries(
             {"type": st.just("text"), "text": st.text(max_size=30)}), max_size=3))},
        optional={"name": st.text(min_size=1, max_size=8)}), min_size=1, max_size=4)},
    optional={"tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": st.text(min_size=1, max_size=10), "description": st.text(max_size=40)})}), max_size=2),
        "tool_choice": st.sampled_from(["auto", "none", "required"])}))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_realistic_prompt_matches_the_documented_rule_and_bounds_the_text(server, body):
    # given any body, the server bills exactly billing.prompt_tokens, never less than the UTF-8 bytes of
    # the text in it (the rule the gateway's hold estimate must be proven against)
    server.reset()
    server.script(KEY, billing="realistic")
    response = httpx.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "m", "max_tokens": 0, **body}, timeout=10)
    assert response.status_code == 200, response.text
    prompt = response.json()["usage"]["prompt_tokens"]
    assert prompt == billing.prompt_tokens({"model": "m", **body})
    text = "".join(m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"])
                   for m in body["messages"])
    assert prompt >= len(text.encode("utf-8", "surrogatepass")) + 3 * len(body["messages"]) + 3


def test_friendly_billing_stays_the_default(http):
    # tests/pool's exact figures depend on it; see the report on issue 12 for the tests that would change
    assert _chat(http).json()["usage"]["prompt_tokens"] == PROMPT_TOKENS


def test_realistic_context_window_answers_context_length_in_the_keys_dialect(fake, http):
    fake.script(KEY, billing="realistic", dialect="groq")
    fake.set_model_limits("fake-model", context_window=100)
    response = _chat(http, messages=[{"role": "user", "content": "x" * 200}])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    too_much = _chat(http, max_tokens=80)  # prompt 42 + cap 80 > 100
    assert too_much.status_code == 400
    assert _chat(http, max_tokens=50).status_code == 200
    assert fake.totals().requests == 1  # errors bill nothing


# every delta kind in streams


def test_answer_of_every_delta_kind_as_json(fake, http):
    fake.script(KEY, answer=[("reasoning_content", 3), ("content", 2)])
    body = _chat(http).json()
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] == "why0 why1 why2"
    assert message["content"] == "tok0 tok1"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 5
    fake.script(KEY, answer=[("refusal", 3)])
    refused = _chat(http).json()["choices"][0]["message"]
    assert refused["refusal"] == "no0 no1 no2" and refused["content"] is None


def test_tool_call_arguments_stream_in_pieces(fake, http, sdk):
    fake.script(KEY, answer=[("tool_calls", 4, "lookup")])
    chunks = _stream_chunks(_chat(http, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[:-2]]
    assert calls[0]["id"] == "call_fake0" and calls[0]["function"]["name"] == "lookup"
    assert all("id" not in call for call in calls[1:])
    assert "".join(call["function"]["arguments"] for call in calls) == '{"q":"a1 a2 "}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    completion = sdk.chat.completions.create(model="fake-model", messages=MESSAGES)
    (call,) = completion.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("lookup", {"q": "a1 a2 "})
    assert completion.choices[0].message.content is None


def test_every_delta_kind_counts_and_the_cap_cuts_across_kinds(fake, http):
    fake.script(KEY, answer=[("reasoning_content", 5), ("tool_calls", 3), ("refusal", 2), ("content", 5)])
    chunks = _stream_chunks(_chat(http, stream=True, max_tokens=12, stream_options={"include_usage": True}))
    kinds = [next(k for k in ("reasoning_content", "tool_calls", "refusal", "content") if k in c["choices"][0]["delta"])
             for c in chunks[:-2]]
    assert kinds == ["reasoning_content"] * 5 + ["tool_calls"] * 3 + ["refusal"] * 2 + ["content"] * 2
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    assert _billed(fake).completion_tokens == 12


@pytest.mark.parametrize("kind", ["reasoning_content", "tool_calls", "refusal", "content"])
def test_cut_stream_counts_events_of_any_kind(fake, http, kind):
    fake.script(KEY, answer=[(kind, 240)], cut_stream_after=7)
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        with http.stream("POST", "/v1/chat/completions",
                         json={"model": "m", "messages": MESSAGES, "stream": True}) as response:
            received.extend(line for line in response.iter_lines() if line)
    assert len(received) == 7
    assert all(kind in json.loads(line.removeprefix("data: "))["choices"][0]["delta"] for line in received)
    billed = _billed(fake)
    assert (billed.completion_tokens, billed.complete) == (7, False)  # billed what was delivered


def test_cut_stream_with_n_choices_counts_events_across_choices(fake, http):
    fake.script(KEY, cut_stream_after=5)
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with http.stream("POST", "/v1/chat/completions",
                         json={"model": "m", "messages": MESSAGES, "stream": True, "n": 3}) as response:
            received.extend(line for line in response.iter_lines() if line)
    assert [json.loads(line[6:])["choices"][0]["index"] for line in received] == [0, 1, 2, 0, 1]
    assert _billed(fake).completion_tokens == 5


# request-specific vs key-level errors, per provider family


def _err(body):
    return body[0]["error"] if isinstance(body, list) else body["error"]


ERROR_CASES = [
    ("openai", "rate_limit", 429, lambda b: b["error"]["code"] == "rate_limit_exceeded"
     and b["error"]["type"] == "requests"),
    ("openai", "request_too_large", 429, lambda b: b["error"]["code"] == "rate_limit_exceeded"
     and b["error"]["type"] == "tokens" and b["error"]["message"].startswith("Request too large for fake-model")
     and "tokens per min (TPM)" in b["error"]["message"]),
    ("openai", "context_length", 400, lambda b: b["error"]["code"] == "context_length_exceeded"),
    ("openai", "insufficient_quota", 429, lambda b: b["error"]["code"] == b["error"]["type"] == "insufficient_quota"),
    ("max_tokens_only", "request_too_large", 429, lambda b: b["error"]["message"].startswith("Request too large")),
    ("groq", "rate_limit", 429, lambda b: b["error"]["code"] == "rate_limit_exceeded"
     and b["error"]["message"].startswith("Rate limit reached")),
    ("groq", "request_too_large", 413, lambda b: b["error"]["code"] == "rate_limit_exceeded"
     and b["error"]["message"].startswith("Request too large for model `fake-model`")),
    ("groq", "context_length", 400, lambda b: b["error"]["code"] == "context_length_exceeded"),
    ("deepseek", "rate_limit", 429, lambda b: b["error"]["message"].startswith("Rate Limit Reached")),
    ("deepseek", "insufficient_quota", 402, lambda b: b["error"]["message"].startswith("Insufficient Balance")),
    ("deepseek", "context_length", 400, lambda b: b["error"]["code"] == "invalid_request_error"
     and "maximum context length" in b["error"]["message"]),
    ("mistral", "rate_limit", 429, lambda b: b["object"] == "error" and b["type"] == "rate_limited"),
    ("gemini", "rate_limit", 429, lambda b: _err(b)["status"] == "RESOURCE_EXHAUSTED"),
    ("gemini", "insufficient_quota", 429, lambda b: _err(b)["status"] == "RESOURCE_EXHAUSTED"
     and "quota" in _err(b)["message"]),
    ("gemini", "context_length", 400, lambda b: _err(b)["status"] == "INVALID_ARGUMENT"
     and _err(b)["message"].startswith("The input token count")),
    ("anthropic", "rate_limit", 429, lambda b: b["type"] == "error" and b["error"]["type"] == "rate_limit_error"),
    ("anthropic", "request_too_large", 413, lambda b: b["error"]["type"] == "request_too_large"),
    ("anthropic", "context_length", 400, lambda b: b["error"]["message"].startswith("prompt is too long:")),
    ("anthropic", "insufficient_quota", 400, lambda b: "credit balance is too low" in b["error"]["message"]),
    ("anthropic", "overloaded", 529, lambda b: b["error"]["type"] == "overloaded_error"),
    ("openrouter", "insufficient_quota", 402, lambda b: b["error"]["code"] == 402),
    ("openrouter", "rate_limit", 429, lambda b: b["error"]["code"] == 429),
    ("openrouter", "context_length", 400, lambda b: "maximum context length" in b["error"]["message"]),
    # Z.ai: one status (429) for a rate limit, an empty account and a busy model; only the code differs
    ("zai", "rate_limit", 429, lambda b: b["error"]["code"] == "1302"),
    ("zai", "insufficient_quota", 429, lambda b: b["error"]["code"] == "1113"),
    ("zai", "overloaded", 429, lambda b: b["error"]["code"] == "1305"),
]


@pytest.mark.parametrize(("dialect", "kind", "status", "check"), ERROR_CASES,
                         ids=[f"{d}-{k}" for d, k, _, _ in ERROR_CASES])
def test_scripted_errors_use_each_familys_documented_body(fake, http, dialect, kind, status, check):
    fake.script(KEY, dialect=dialect, error=kind, times=1)
    response = _chat(http)
    assert response.status_code == status
    assert check(response.json()), response.text
    assert _chat(http).status_code == 200  # times=1
    assert fake.totals().requests == 1  # only the second request was served and billed


def test_every_dialect_can_rate_limit_and_only_documented_kinds_are_offered():
    for name, dialect in DIALECTS.items():
        assert "rate_limit" in dialect.errors, name
        assert set(dialect.errors) <= dialects.ERROR_KINDS, name


def test_scripted_errors_through_the_sdk_with_retry_after(fake, sdk):
    fake.script(KEY, error="request_too_large", retry_after=7, times=1)
    with pytest.raises(openai.RateLimitError) as excinfo:
        sdk.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=100)
    assert excinfo.value.response.headers["Retry-After"] == "7"
    assert excinfo.value.code == "rate_limit_exceeded"
    assert "Requested 105" in excinfo.value.message  # prompt + cap, as OpenAI reports it
    fake.script(KEY, error="context_length", times=1)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert bad.value.code == "context_length_exceeded"


# what the fake billed, per request


def test_records_expose_what_was_billed_and_totals_sum_it(fake, http):
    fake.script(OTHER, billing="realistic")
    _chat(http, n=2, max_tokens=3)
    _chat(http, stream=True)
    _chat(http, headers={"Authorization": f"Bearer {OTHER}"}, max_completion_tokens=4)
    fake.script(KEY, status=500, times=1)
    _chat(http)
    http.get("/v1/models")
    billed = [r.billed for r in fake.requests]
    assert billed[0] == Billed(PROMPT_TOKENS, 6, 2, 3, "max_tokens", "openai", False, True)
    assert billed[1] == Billed(PROMPT_TOKENS, 20, 1, None, None, "openai", False, True)
    assert billed[2] == Billed(42, 4, 1, 4, "max_completion_tokens", "openai", True, True)
    assert billed[3] is None and billed[4] is None
    assert fake.totals() == Totals(3, PROMPT_TOKENS * 2 + 42, 30)
    assert fake.totals(key=OTHER) == Totals(1, 42, 4)
    # exact cost at $1/M input and $2/M output in nanodollars per 1M tokens: no rounding
    assert fake.totals(key=OTHER).cost(1_000_000_000, 2_000_000_000) == 42 * 1_000 + 4 * 2_000


def test_client_going_away_bills_what_was_delivered(fake, caplog):
    fake.chunks, fake.chunk_delay = 50, 0.02
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        with client.stream("POST", "/v1/chat/completions",
                           json={"model": "m", "messages": MESSAGES, "stream": True}) as response:
            for i, _ in enumerate(response.iter_lines()):
                if i >= 6:
                    break
    deadline = time.monotonic() + 5
    while _billed(fake) is None and time.monotonic() < deadline:  # set once the server's write fails
        time.sleep(0.05)
    billed = _billed(fake)
    assert billed.complete is False
    assert 4 <= billed.completion_tokens < 50
    time.sleep(0.3)  # the server would log just after its handler returns
    assert "Error handling request" not in caplog.text  # a client hanging up is not a server error


# --- lifecycle -----------------------------------------------------------------------------------------


def test_start_stop_and_context_manager():
    fake = FakeProvider()
    with pytest.raises(RuntimeError):
        fake.url  # noqa: B018
    with fake:
        url = fake.url
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v1/models", timeout=1)


def test_two_servers_get_different_ports():
    with FakeProvider() as a, FakeProvider() as b:
        assert a.url != b.url


def test_stop_does_not_hang_on_a_slow_request():
    slow = FakeProvider(delay=30).start()
    outcome: list[object] = []

    def call():
        try:
            outcome.append(httpx.get(f"{slow.url}/v1/models", timeout=60))
        except httpx.HTTPError as exc:  # the server going away mid-request is the expected outcome
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    slow.stop()
    assert time.monotonic() - started < 5
    thread.join(5)
    assert len(outcome) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_standalone_cli_serves_and_stops_on_sigterm():
    port = _free_port()
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakeprovider", "--port", str(port), "--delay-ms", "5", "--chunks", "3"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout.readline().strip() == f"fakeprovider listening on http://127.0.0.1:{port}"
        body = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES},
            headers={"Authorization": "Bearer k"},
        ).json()
        assert body["usage"]["completion_tokens"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
