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

from keys.balance import (
    BalanceParseError,
    BalanceReading,
    FollowUpRequired,
    parse_balance,
)
from tests.fakeprovider import FakeProvider, mask_key

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
