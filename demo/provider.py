"""The demo provider: a small OpenAI-compatible upstream served by `make run` itself, so that a newcomer
sees Headroom route, stream, charge, reward and pay out with no provider key and no network.

Local settings only (HEADROOM_DEMO_PROVIDER; production settings refuse it): config/asgi.py mounts it at
DEMO_PREFIX in front of everything else, and `seed_demo` points the demo providers' base URL at it.
It speaks the wire formats the gateway reads from real providers — chat completions as JSON and as
SSE `chat.completion.chunk` events with the `include_usage` chunk, embeddings (float or base64),
`/models`, and OpenRouter's `/key` balance reply — and bills like one: its usage is counted from the
request (every word of every message's content is a prompt token; every word it writes, for each of
the `n` choices, a completion token), the answer stops at the cap the request sets (`max_tokens` or
`max_completion_tokens`, whichever is smaller) with `finish_reason: "length"`, and the same request
always gets the same answer. Any bearer key is accepted: the demo world's keys are made up.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import time

import orjson
from django.conf import settings

DEMO_PREFIX = "/_demo/v1"
CHAT_MODELS = ("demo-mini",)
EMBEDDING_MODELS = ("demo-embed",)
EMBEDDING_DIMENSIONS = 16
# What /key reports: an OpenRouter key with a $25 limit of which $20 is left (the exchange lists keys
# with at least $0.10 left).
BALANCE = {"label": "demo", "limit": 25.0, "usage": 5.0, "limit_remaining": 20.0, "is_free_tier": False}


def answer_words(model: str, messages: list) -> list[str]:
    """The deterministic answer, as words: it names the model and echoes the start of the last message."""
    said = ""
    for message in reversed(messages):
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            said = message["content"]
            break
    echo = " ".join(said.split()[:12]) or "nothing"
    return (
        f"Hello from {model}, Headroom's offline demo model. You said: {echo}. Every word of this answer is "
        "one completion token, charged to the nanodollar and paid out as the route you took decides."
    ).split()


def _words(content) -> int:
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):  # content parts
        return sum(_words(part.get("text")) for part in content if isinstance(part, dict))
    return 0


def prompt_tokens(messages: list) -> int:
    return max(1, sum(_words(m.get("content")) for m in messages if isinstance(m, dict)))


def _cap(body: dict) -> int | None:
    caps = [body.get(f) for f in ("max_tokens", "max_completion_tokens") if isinstance(body.get(f), int)]
    return min(caps) if caps else None


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _error(status: int, message: str, kind: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": {"message": message, "type": kind, "code": None}})


class DemoProvider:
    """ASGI: requests under DEMO_PREFIX are the demo provider's; everything else goes to `app`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(DEMO_PREFIX + "/"):
            return await self.app(scope, receive, send)
        path = scope["path"][len(DEMO_PREFIX):]
        headers = dict(scope["headers"])
        if not headers.get(b"authorization", b"").startswith(b"Bearer "):
            return await _send_json(send, *_error(401, "No API key provided.", "invalid_request_error"))
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method = scope["method"]
        if method == "GET" and path == "/models":
            models = [{"id": m, "object": "model", "created": 0, "owned_by": "headroom-demo"}
                      for m in CHAT_MODELS + EMBEDDING_MODELS]
            return await _send_json(send, 200, orjson.dumps({"object": "list", "data": models}))
        if method == "GET" and path == "/key":
            return await _send_json(send, 200, orjson.dumps({"data": BALANCE}))
        if method == "POST" and path in ("/chat/completions", "/embeddings"):
            try:
                request = orjson.loads(body)
            except orjson.JSONDecodeError:
                return await _send_json(send, *_error(400, "The body is not JSON.", "invalid_request_error"))
            if not isinstance(request, dict):
                return await _send_json(send, *_error(400, "The body is not a JSON object.", "invalid_request_error"))
            if path == "/embeddings":
                return await _send_json(send, *_embeddings(request))
            return await _chat(request, send)
        return await _send_json(send, *_error(404, f"No route {method} {path}.", "invalid_request_error"))


async def _send_json(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _embeddings(request: dict) -> tuple[int, bytes]:
    model = request.get("model")
    if model not in EMBEDDING_MODELS:
        return _error(404, f"The model {model!r} does not exist.", "invalid_request_error")
    inputs = request.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not all(isinstance(text, str) for text in inputs):
        return _error(400, "'input' must be a string or a list of strings.", "invalid_request_error")
    data = []
    for index, text in enumerate(inputs):
        digest = hashlib.sha256(text.encode()).digest()
        vector = [(byte - 127.5) / 127.5 for byte in digest[:EMBEDDING_DIMENSIONS]]
        if request.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = max(1, sum(len(text.split()) for text in inputs))
    return 200, orjson.dumps({"object": "list", "data": data, "model": model,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def _chat(request: dict, send) -> None:
    model, messages = request.get("model"), request.get("messages")
    if model not in CHAT_MODELS:
        return await _send_json(send, *_error(404, f"The model {model!r} does not exist.", "invalid_request_error"))
    if not isinstance(messages, list) or not messages:
        return await _send_json(send, *_error(400, "'messages' must be a non-empty list.", "invalid_request_error"))
    n = request.get("n") if isinstance(request.get("n"), int) and request.get("n") > 0 else 1
    words = answer_words(model, messages)
    cap = _cap(request)
    finish = "stop"
    if cap is not None and cap < len(words):
        words, finish = words[:cap], "length"
    prompt, rid, created = prompt_tokens(messages), f"chatcmpl-demo{time.monotonic_ns()}", int(time.time())
    usage = _usage(prompt, len(words) * n)
    if not request.get("stream"):
        text = " ".join(words)
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                   for i in range(n)]
        return await _send_json(send, 200, orjson.dumps({"id": rid, "object": "chat.completion", "created": created,
                                                         "model": model, "choices": choices, "usage": usage}))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})

    async def event(choices: list, **extra) -> None:
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": choices, **extra}
        await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n", "more_body": True})

    await event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None} for i in range(n)])
    delay = settings.HEADROOM_DEMO_WORD_SECONDS  # a visible stream for people; 0 in tests
    for position, word in enumerate(words):
        piece = word if position == 0 else " " + word
        await event([{"index": i, "delta": {"content": piece}, "finish_reason": None} for i in range(n)])
        if delay:
            await asyncio.sleep(delay)
    await event([{"index": i, "delta": {}, "finish_reason": finish} for i in range(n)])
    if (request.get("stream_options") or {}).get("include_usage"):
        await event([], usage=usage)
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
