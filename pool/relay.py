"""Relaying a provider's answer to the client and settling the request once the answer is known.

The gateway (pool.gateway) hands over once the provider's first byte has arrived: from then on a
failure can no longer try another key. A JSON answer is read whole; a stream is relayed event by
event (SSE, with keepalive comments in idle gaps) while its usage is captured, and a client that
disconnects stops the upstream read. Either way the settlement runs shielded from cancellation, so a
request is settled exactly once whatever happens to the connection, and the receipt (the cost
charged, whether BYOK) goes out after it, on the usage object.
"""

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp
import orjson
from django.conf import settings

from pool import errors, metrics, sse
from pool.errors import GatewayError
from pool.models import RequestRecord
from pool.selectors import Caller, Target
from pool.services import PickedKey, Receipt, Settlement, Usage, request_settle

Outcome = RequestRecord.Outcome

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass
class Call:
    request_id: str
    started: float
    created_at: datetime
    caller: Caller
    target: Target
    task: str
    stream: bool
    client_wants_usage: bool
    upstream_path: str
    upstream_body: bytes = field(repr=False)  # the prompt: never in a repr, log or trace
    prompt_estimate: int
    completion_bound: int  # n × the cap forwarded: the most output the provider could generate
    platform_only: bool


# The fields of a message (JSON answer) or delta (stream event) whose text the model generated.
GENERATED_TEXT = ("content", "reasoning_content", "reasoning", "refusal")


def generated_bytes(message: dict) -> int:
    """The UTF-8 bytes of what the model generated in a message or a delta: its text of every kind
    (answer, reasoning, refusal) and its tool calls' names and arguments.

    Counted when a provider reports no usage (a cut or cancelled stream, an answer without `usage`):
    one token per byte is an upper bound of the tokens delivered for every byte-level tokenizer, as for
    the prompt (README "Money integrity"), so the platform never pays for output it did not charge.
    It is bounded by what the provider could generate at all (`Call.completion_bound`, held for); a
    provider's own usage, when it comes, wins."""
    total = 0
    for name in GENERATED_TEXT:
        text = message.get(name)
        if isinstance(text, str):
            total += len(text.encode("utf-8", "surrogatepass"))
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                for name in ("name", "arguments"):
                    text = function.get(name)
                    if isinstance(text, str):
                        total += len(text.encode("utf-8", "surrogatepass"))
    return total


def settlement_of(call: Call, key, outcome: str, usage: Usage, **extra) -> Settlement:
    return Settlement(
        request_id=call.request_id,
        created_at=call.created_at,
        caller=call.caller,
        target=call.target,
        task=call.task,
        stream=call.stream,
        outcome=outcome,
        usage=usage,
        key=key,
        latency_ms=int((time.monotonic() - call.started) * 1000),
        **extra,
    )


def _usage_from(data: object) -> Usage | None:
    if not isinstance(data, dict):
        return None
    prompt = data.get("prompt_tokens", data.get("input_tokens"))
    completion = data.get("completion_tokens", data.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
        return None
    return Usage(prompt, completion)


def _receipt_usage(usage: dict, receipt: Receipt) -> dict:
    """OpenRouter-style receipt fields on the usage object: cost charged (USD) and whether BYOK."""
    from core.money import usd

    return {**usage, "cost": float(usd(receipt.charged)), "is_byok": receipt.is_byok}


def _receipt_headers(call: Call, key: PickedKey) -> list[tuple[bytes, bytes]]:
    """The receipt's headers, built once the key that answers is known (and so noted for the metrics)."""
    metrics.served_by.set((key.route, call.target.provider_slug))
    return [(b"x-headroom-route", key.route.encode()), (b"x-headroom-request-id", call.request_id.encode())]


async def relay_json(call: Call, key: PickedKey, response, first: bytes, ttfb_ms: int, send) -> None:
    try:
        raw = first + await response.read()
        data = orjson.loads(raw)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        data = None
    usage = _usage_from(data.get("usage")) if isinstance(data, dict) else None
    if usage is None:
        outcome = Outcome.CUT if data is None else Outcome.SUCCEEDED
        completion = 0
        if isinstance(data, dict):
            for choice in data.get("choices") or []:
                message = choice.get("message") if isinstance(choice, dict) else None
                completion += generated_bytes(message) if isinstance(message, dict) else 0
        usage = Usage(call.prompt_estimate, min(completion, call.completion_bound), estimated=True)
    else:
        outcome = Outcome.SUCCEEDED
    receipt = await asyncio.shield(request_settle(s=settlement_of(
        call, key, outcome, usage, upstream_status=200, ttfb_ms=ttfb_ms,
    )))
    if data is None:
        raise GatewayError(502, errors.UPSTREAM_ERROR.format(status=200), type="api_error", code="upstream_malformed")
    data["model"] = call.target.requested
    data["usage"] = _receipt_usage(data.get("usage") if isinstance(data.get("usage"), dict) else {
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }, receipt)
    await send_json(send, 200, data, extra_raw=_receipt_headers(call, key))


@dataclass
class StreamState:
    usage: Usage | None = None
    usage_chunk: dict | None = None
    generated: int = 0  # bytes of generated text relayed (generated_bytes of every delta)
    saw_done: bool = False


async def relay_stream(call: Call, key: PickedKey, response, first: bytes, ttfb_ms: int, receive, send) -> None:
    state = StreamState()
    disconnected = asyncio.Event()

    async def watch_disconnect():
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
                return

    watcher = asyncio.create_task(watch_disconnect())
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + _receipt_headers(call, key)})
    pump = asyncio.create_task(_pump(call, response, first, state, send))
    outcome = Outcome.CANCELLED
    try:
        done, _ = await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if pump in done:
            outcome = pump.result()
        else:
            pump.cancel()  # the client left: stop reading the provider (closes the upstream call)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
    finally:
        watcher.cancel()
        usage = state.usage or Usage(
            call.prompt_estimate, min(state.generated, call.completion_bound), estimated=True)
        receipt = await asyncio.shield(request_settle(s=settlement_of(
            call, key, outcome, usage, upstream_status=200, ttfb_ms=ttfb_ms,
            error_code="" if outcome == Outcome.SUCCEEDED else outcome,
        )))
    if outcome == Outcome.CANCELLED:
        return
    tail = b""
    if outcome == Outcome.SUCCEEDED:
        if call.client_wants_usage:
            chunk = state.usage_chunk or {
                "id": call.request_id, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": call.target.requested, "choices": [],
                "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                          "total_tokens": usage.prompt_tokens + usage.completion_tokens},
            }
            chunk["usage"] = _receipt_usage(chunk.get("usage") or {}, receipt)
            tail += sse.encode(chunk)
        tail += sse.encode(sse.DONE)
    else:
        tail += sse.encode(GatewayError(502, errors.STREAM_CUT, type="api_error", code="upstream_stream_cut").body())
    await send({"type": "http.response.body", "body": tail, "more_body": False})


async def _pump(call: Call, response, first: bytes, state: StreamState, send) -> str:
    """Relay provider events to the client until [DONE]; returns the outcome."""
    splitter = sse.EventSplitter()
    keepalive = settings.HEADROOM_SSE_KEEPALIVE_SECONDS
    chunk = first
    try:
        while True:
            out = []
            for event in splitter.feed(chunk):
                forwarded = _inspect(event, state, call)
                if forwarded is not None:
                    out.append(forwarded)
            if out:
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
            if state.saw_done:
                return Outcome.SUCCEEDED
            idle = asyncio.timeout(keepalive)  # a timer, not a task per read as wait_for would make
            try:
                async with idle:
                    chunk = await response.content.readany()
            except aiohttp.ClientError:
                # Before the TimeoutError clause: aiohttp's read timeout is a TimeoutError too, and
                # it means the provider went silent for good, not an idle gap.
                raise
            except TimeoutError:
                if not idle.expired():
                    raise
                # Idle upstream: keep proxies and clients from timing the stream out.
                await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                chunk = b""
                continue
            if not chunk:
                return Outcome.CUT  # the provider closed the stream without [DONE]
    except (aiohttp.ClientError, ConnectionError):
        return Outcome.CUT


def _inspect(event: bytes, state: StreamState, call: Call) -> bytes | None:
    """Look at one event: capture usage, count what was generated, hide what the client did not ask for."""
    data = sse.event_data(event)
    if data is None:
        return event + b"\n\n"  # a comment: pass it on
    if data.strip() == sse.DONE:
        state.saw_done = True
        return None  # sent after settlement, behind the receipt
    try:
        payload = orjson.loads(data)
    except ValueError:
        return event + b"\n\n"
    if not isinstance(payload, dict):
        return event + b"\n\n"
    if "error" in payload:
        # A provider error mid-stream: never relayed as is (it may echo the key).
        raise aiohttp.ClientPayloadError("provider error event")
    usage = _usage_from(payload.get("usage"))
    if usage is not None:
        state.usage = usage  # cumulative formats: the last value is the total
    choices = payload.get("choices")
    if usage is not None and not choices:
        state.usage_chunk = payload
        return None  # the usage chunk goes out after settlement, with the cost, if asked for
    for choice in choices or []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            state.generated += generated_bytes(delta)
    if usage is not None and not call.client_wants_usage:
        payload.pop("usage", None)
        return sse.encode(payload)
    return event + b"\n\n"


async def send_json(send, status: int, body: dict, *, extra: dict | None = None, extra_raw=None) -> None:
    data = orjson.dumps(body)
    headers = list(JSON_HEADERS) + [(b"content-length", str(len(data)).encode())]
    for name, value in (extra or {}).items():
        headers.append((name.encode(), value.encode()))
    headers.extend(extra_raw or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
