"""A hypothesis fuzz of /v1 bodies: whatever the JSON, the gateway answers a 2xx or an OpenAI-style
4xx, never a 5xx (the fake provider plays an upstream that serves every well-formed request)."""

from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.pool.conftest import MODEL, PROVIDER

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
MODELS = st.sampled_from([f"{PROVIDER}/{MODEL}", f"{PROVIDER}-pool/{MODEL}", "nope/x", ""])
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]) | JSON, "content": st.text(max_size=60) | JSON}
)
# Each field is mostly what a client would send and sometimes any JSON at all, so bodies get past the
# parser to the plan, the hold and the upstream as often as they fail on one odd field.
OPTIONAL = {
    "n": st.integers(1, 3) | JSON,
    "max_tokens": st.integers(1, 50) | JSON,
    "max_completion_tokens": st.integers(1, 50) | JSON,
    "stream": st.booleans() | JSON,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | JSON,
    "temperature": st.floats(0, 2) | JSON,
    "stop": st.text(max_size=5) | JSON,
    "user": st.text(max_size=10) | JSON,
    "tools": JSON,
    "tool_choice": JSON,
    "response_format": JSON,
    "logit_bias": JSON,
    "encoding_format": st.sampled_from(["float", "base64"]) | JSON,
}
BODIES = {
    "/v1/chat/completions": st.fixed_dictionaries(
        {"model": MODELS | JSON, "messages": st.lists(MESSAGE, min_size=1, max_size=3) | JSON}, optional=OPTIONAL
    ) | JSON,
    "/v1/embeddings": st.fixed_dictionaries(
        {"model": MODELS | JSON, "input": st.text(max_size=40) | st.lists(st.text(max_size=20), max_size=3) | JSON},
        optional=OPTIONAL,
    ) | JSON,
}


def _assert_clean(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
def test_no_body_makes_the_gateway_fail(world, path):
    world.key()
    member = world.member()
    client = httpx.Client(base_url=world.url, headers={"Authorization": f"Bearer {member.api_key}"}, timeout=30)
    statuses = Counter()

    @given(body=BODIES[path])
    @settings(max_examples=80, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def fuzz(body):
        response = client.post(path, json=body)
        statuses[response.status_code] += 1
        _assert_clean(response)

    fuzz()
    print(f"\n{path}: {dict(sorted(statuses.items()))}")
    assert statuses[200] > 0, "no body reached the upstream: the fuzz tests only the parser"


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000 + b"]" * 100_000, b'{"model":' * 5_000 + b"1" + b"}" * 5_000,
     b'{"model": "fakeai/tiny", "messages": ' + b"[" * 300 + b"]" * 300 + b"}", b"\xff\xfe", b"", b"null",
     b'{"messages": "\\ud800"}'],
    ids=["deep array", "deep object", "readable but not writable again", "not utf-8", "empty", "null",
         "lone surrogate"],
)
def test_malformed_bytes_are_a_400(world, raw):
    member = world.member()
    response = httpx.post(f"{world.url}/v1/chat/completions", content=raw, timeout=30,
                          headers={"Authorization": f"Bearer {member.api_key}", "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500
    _assert_clean(response)
