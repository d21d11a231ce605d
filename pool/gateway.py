"""The OpenAI-compatible gateway: a small ASGI application for `/v1`, mounted in front of Django.

Why raw ASGI rather than a Django view: PERFORMANCE.md measured Django's ASGI
handler and its async-wrapped middleware at a large share of the per-request
budget, and this path needs control Django does not give — counting body bytes
as they arrive (413 for chunked and understated bodies), noticing a client that
disconnects mid-stream, and holding the response start until the provider's
first byte so that a failing key can still be swapped for the next one.
Everything else (dashboard, management API, admin) goes to Django unchanged.

The flow of one request: authenticate → own rate limit → parse and validate →
plan the routes and reserve funds (402/403 up front) → pick a key (LRU, atomic)
→ call the provider; before its first byte a failure tries the next key, or
fails over from BYOK to the platform → relay (SSE or JSON) while capturing
usage → settle exactly once (shielded from cancellation) → send the receipt.
The relay and the settlement after the first byte are pool.relay's.
"""

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

import aiohttp
import django.db
import orjson
import psycopg
import psycopg_pool
from django.conf import settings
from django.utils import timezone

from core.money import MAX_SQL_TOKENS
from keys.services import (
    provider_key_record_429,
    provider_key_record_failure,
    provider_key_record_success,
    provider_key_release,
)
from pool import errors, metrics, ratelimit, upstream
from pool.errors import GatewayError, bad_request
from pool.hotpath import db
from pool.hotpath.db import db_call
from pool.models import RequestRecord
from pool.relay import Call, relay_json, relay_stream, send_json, settlement_of
from pool.selectors import routable_models
from pool.upstream_errors import BODY_LIMIT, Blame, upstream_error_blame
from pool.services import (
    PickedKey,
    Plan,
    Usage,
    caller_open,
    key_pick,
    request_begin,
    request_settle,
    route_open,
)

logger = logging.getLogger(__name__)
# What the driver, its pool and Django raise while PostgreSQL cannot be reached.
DATABASE_DOWN = (psycopg.OperationalError, psycopg_pool.PoolTimeout, django.db.OperationalError)
Route = RequestRecord.Route
Outcome = RequestRecord.Outcome

FORBIDDEN_FIELDS = ("api_base", "base_url", "api_key", "headers", "extra_headers")
GATEWAY_FIELDS = ("key_pool_mode",)
MAX_WRITABLE_DEPTH = 254  # orjson.dumps raises beyond this nesting


class Gateway:
    """ASGI app: `/v1/...` is served here, everything else by `fallback` (Django)."""

    def __init__(self, fallback):
        self.fallback = fallback

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["path"] == "/v1" or scope["path"].startswith("/v1/")):
            await handle(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)  # Django does not speak lifespan; the gateway does
        else:
            await self.fallback(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await upstream.close_all()  # finish the pooled provider connections cleanly
                await ratelimit.close_all()
                await db.close_all()
                await send({"type": "lifespan.shutdown.complete"})
                return


# --- the request ----------------------------------------------------------------------------------


def clock() -> datetime:
    """When a request is made: it decides the BYOK month (UTC). One seam, for the month-boundary tests."""
    return timezone.now()


@dataclass
class Failure:
    """An upstream failure before the first byte."""

    kind: str  # rate_limited | key_failed | server | timeout | unreachable | rejected | internal
    status: int | None = None
    retry_after: int | None = None


async def handle(scope, receive, send) -> None:
    path = scope["path"].rstrip("/")
    started = time.monotonic()
    status = 500

    async def send_noting_status(message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await _handle(scope, receive, send_noting_status, path)
    finally:
        metrics.gateway_request_done(endpoint=path if path in ENDPOINTS else "other", status=status, started=started)


async def _handle(scope, receive, send, path: str) -> None:
    method = scope["method"]
    try:
        endpoint = ENDPOINTS.get(path)
        if endpoint is None:
            raise GatewayError(404, errors.NOT_FOUND.format(path=path), code="not_found")
        if method != endpoint[0]:
            raise GatewayError(405, errors.METHOD_NOT_ALLOWED.format(method=method, path=path), code="method_not_allowed")
        headers = _headers(scope)
        raw_key = _bearer(headers)
        await endpoint[1](scope, receive, send, headers, raw_key)
    except GatewayError as error:
        await send_json(send, error.status, error.body(), extra=error.headers)
    except DATABASE_DOWN:
        # PostgreSQL unreachable (restarting, failing over, a network cut): every statement refuses at
        # once, or the pool's wait for a connection (HEADROOM_GATEWAY_DB_WAIT_SECONDS) runs out. A hold
        # already taken stays until the sweep voids it; a settlement the dying server committed without
        # acknowledging it stands (README, "When something dies").
        logger.warning("gateway request on %s: the database is unreachable", path)
        error = GatewayError(503, errors.DATABASE_UNAVAILABLE, type="api_error", code="database_unavailable",
                             headers={"Retry-After": "1"})
        with contextlib.suppress(Exception):
            await send_json(send, error.status, error.body(), extra=error.headers)
    except Exception:
        # Logged without locals or request data (no secrets, no prompts); the client gets a stable shape.
        logger.exception("gateway request failed on %s", path)
        with contextlib.suppress(Exception):
            await send_json(send, 500, GatewayError(500, errors.INTERNAL, type="api_error", code="internal_error").body())


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _bearer(headers: dict[str, str]) -> str:
    """The raw API key from `Authorization: Bearer …`; checked against the database later, in the
    request's first hop (pool.services.request_begin), together with everything else it needs."""
    scheme, _, raw = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not raw.strip() or len(raw) > 256:
        raise GatewayError(401, errors.UNAUTHENTICATED, type="authentication_error", code="invalid_api_key")
    return raw.strip()


async def _read_json(receive, headers: dict[str, str]) -> dict:
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise GatewayError(415, errors.NOT_JSON, code="unsupported_media_type")
    limit = settings.HEADROOM_MAX_BODY_BYTES
    too_large = GatewayError(413, errors.BODY_TOO_LARGE.format(limit=limit), code="request_too_large")
    declared = headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_large
    # Count what actually arrives: a chunked body has no length, and a declared one may understate.
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(400, "The client disconnected.", code="client_disconnected")
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise too_large
        chunks.append(body)
        if not message.get("more_body", False):
            break
    raw = b"".join(chunks)
    try:
        payload = orjson.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request(errors.MALFORMED_JSON, code="invalid_json") from None
    # orjson reads 1,024 levels but writes only 254, and the body is written again (the estimate, the
    # upstream body, after the hold is placed): refuse what it cannot write now. Only a body with that
    # many brackets can nest so deep, so most requests pay two byte counts, not a serialisation.
    if raw.count(b"[") + raw.count(b"{") > MAX_WRITABLE_DEPTH:
        try:
            orjson.dumps(payload)
        except orjson.JSONEncodeError:
            raise bad_request(errors.TOO_DEEP.format(limit=MAX_WRITABLE_DEPTH), code="invalid_json") from None
    if not isinstance(payload, dict):
        raise bad_request(errors.NOT_AN_OBJECT, code="invalid_json")
    for name in FORBIDDEN_FIELDS:
        if name in payload:
            raise bad_request(errors.FORBIDDEN_FIELD.format(field=name), param=name, code="forbidden_field")
    return payload


def _require(payload: dict, name: str, kind: type, description: str, *, optional: bool = True):
    value = payload.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise bad_request(errors.BAD_FIELD.format(field=name, kind=description), param=name)
    return value


def _model(payload: dict) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request(errors.MODEL_REQUIRED, param="model", code="model_required")
    return model.strip()


def _pool_mode(payload: dict) -> bool:
    mode = payload.get("key_pool_mode", "any")
    if mode not in ("any", "platformOnly"):
        raise bad_request(errors.BAD_POOL_MODE, param="key_pool_mode")
    return mode == "platformOnly"


# The prompt's upper bound (README "Money integrity"): one token per UTF-8 byte of everything that
# reaches the model, as compact JSON (keys, quotes and separators included, so never fewer bytes than
# the text it holds), plus the documented per-request and per-message overheads, plus each image part
# at the worst case of its provider's rule (HEADROOM_IMAGE_TOKENS), its URL's bytes besides.
REPLY_PRIMING = 3  # "every reply is primed with <|start|>assistant<|message|>"
PER_MESSAGE = 4  # 3 per message, 1 more for a name
TOOLS_OVERHEAD = 16  # the preamble a provider wraps tool definitions in
PROMPT_FIELDS = ("tools", "functions", "tool_choice", "response_format")


def _json_bytes(raw: bytes) -> int:
    """The bytes of a compact JSON text, counted as Python's json writes it (the providers' own
    serialisers agree): orjson writes a float's exponent below -6 with one digit, Python with two
    ("2.5e-7" / "2.5e-07"), so each "e-" may be one byte more."""
    return len(raw) + raw.count(b"e-")


def _images(message) -> int:
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return 0
    return sum(1 for part in content if isinstance(part, dict) and (part.get("type") == "image_url" or "image_url" in part))


def _prompt_estimate(payload: dict) -> int:
    """An upper bound of the chat request's prompt tokens for every tokenizer in use: each token of a
    byte-level BPE (or SentencePiece with byte fallback) covers at least one byte of its text."""
    total = REPLY_PRIMING
    image = settings.HEADROOM_IMAGE_TOKENS
    for message in payload["messages"]:
        raw = orjson.dumps(message)
        total += PER_MESSAGE + _json_bytes(raw)
        if b"image_url" in raw:
            total += image * _images(message)
    for name in PROMPT_FIELDS:
        value = payload.get(name)
        if value is not None:
            total += _json_bytes(orjson.dumps(value))
    if any(isinstance(payload.get(name), list) and payload.get(name) for name in ("tools", "functions")):
        total += TOOLS_OVERHEAD
    return total


def _choices(payload: dict) -> int:
    """`n`: 1 when absent; refused above HEADROOM_MAX_N (each completion is held for)."""
    value = payload.get("n")
    if value is None:
        return 1
    limit = settings.HEADROOM_MAX_N
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        raise bad_request(errors.BAD_FIELD.format(field="n", kind=f"an integer from 1 to {limit}"), param="n")
    return value


CAP_FIELDS = ("max_completion_tokens", "max_tokens")


def _client_cap(payload: dict) -> int | None:
    """The smaller of the two cap fields the client sent (None: neither): whichever of them a provider
    reads, it would never generate more than the client allowed."""
    cap = None
    for name in CAP_FIELDS:
        value = _require(payload, name, int, "an integer")
        if value is not None and not 1 <= value <= MAX_SQL_TOKENS:
            raise bad_request(errors.BAD_FIELD.format(field=name, kind=f"an integer from 1 to {MAX_SQL_TOKENS}"),
                              param=name)
        if value is not None:
            cap = value if cap is None else min(cap, value)
    return cap


async def _begin(
    *, raw_key: str, model: str, task: str, stream: bool, wants_usage: bool, path: str, body: dict,
    prompt_estimate: int, max_tokens: int | None, platform_only: bool, choices: int = 1,
) -> tuple[Call, Plan, PickedKey | None]:
    """The first hop, then the body as the provider gets it: the model's own name and, for a completion,
    the cap that was held, in the one field the provider reads (the other dropped), serialised once."""
    request_id, created_at = f"req_{secrets.token_hex(16)}", clock()
    metrics.request_id.set(request_id)
    started = time.monotonic()
    begun = await request_begin(
        raw_key=raw_key, model=model, request_id=request_id, at=created_at,
        prompt_tokens=prompt_estimate, max_tokens=max_tokens, platform_only=platform_only, choices=choices,
    )
    metrics.served_by.set(("", begun.target.provider_slug))
    first_key = begun.first_key
    if begun.first_busy:  # every candidate held by another writer for a moment: try again
        first_key = await key_pick(caller=begun.caller, target=begun.target, route=begun.plan.routes[0],
                                   include_exchange=begun.plan.include_exchange, request_id=request_id)
    body["model"] = begun.target.model
    if max_tokens != 0:
        for name in CAP_FIELDS:
            body.pop(name, None)
        body[begun.plan.cap_field] = begun.plan.cap
    call = Call(
        request_id=request_id,
        started=started,
        created_at=created_at,
        caller=begun.caller,
        target=begun.target,
        task=task,
        stream=stream,
        client_wants_usage=wants_usage,
        upstream_path=path,
        upstream_body=orjson.dumps(body),
        prompt_estimate=prompt_estimate,
        completion_bound=choices * begun.plan.cap if max_tokens != 0 else 0,
        platform_only=platform_only,
    )
    return call, begun.plan, first_key


# --- endpoints ------------------------------------------------------------------------------------


async def chat_completions(scope, receive, send, headers, raw_key: str) -> None:
    payload = await _read_json(receive, headers)
    model = _model(payload)
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request(errors.MESSAGES_REQUIRED, param="messages")
    stream = _require(payload, "stream", bool, "a boolean") or False
    max_tokens = _client_cap(payload)
    choices = _choices(payload)
    stream_options = _require(payload, "stream_options", dict, "an object") or {}
    platform_only = _pool_mode(payload)

    body = {k: v for k, v in payload.items() if k not in GATEWAY_FIELDS}
    wants_usage = bool(stream_options.get("include_usage"))
    if stream:
        # Always ask for usage: settlement needs it. The client sees it only if it asked.
        body["stream_options"] = {**stream_options, "include_usage": True}
    call, plan, first_key = await _begin(
        raw_key=raw_key, model=model, task="chat", stream=stream, wants_usage=wants_usage,
        path="chat/completions", body=body, prompt_estimate=_prompt_estimate(payload),
        max_tokens=max_tokens, platform_only=platform_only, choices=choices,
    )
    await dispatch(call, plan, first_key, receive, send)


async def embeddings(scope, receive, send, headers, raw_key: str) -> None:
    payload = await _read_json(receive, headers)
    model = _model(payload)
    value = payload.get("input")
    # One token per UTF-8 byte of the input's JSON (a token-id array: at least a byte per id).
    if isinstance(value, str) or isinstance(value, list) and value:
        estimate = len(orjson.dumps(value))
    else:
        raise bad_request(errors.INPUT_REQUIRED, param="input")
    platform_only = _pool_mode(payload)
    body = {k: v for k, v in payload.items() if k not in GATEWAY_FIELDS}
    call, plan, first_key = await _begin(
        raw_key=raw_key, model=model, task="embeddings", stream=False, wants_usage=False,
        path="embeddings", body=body, prompt_estimate=estimate, max_tokens=0,
        platform_only=platform_only,
    )
    await dispatch(call, plan, first_key, receive, send)


async def models(scope, receive, send, headers, raw_key: str) -> None:
    await caller_open(raw_key=raw_key, at=clock())
    ids = await db_call(routable_models)
    created = int(time.time())
    data = [{"id": i, "object": "model", "created": created, "owned_by": i.split("/", 1)[0]} for i in ids]
    await send_json(send, 200, {"object": "list", "data": data})


ENDPOINTS = {
    "/v1/chat/completions": ("POST", chat_completions),
    "/v1/embeddings": ("POST", embeddings),
    "/v1/models": ("GET", models),
}


# --- dispatch: routes, keys, fail-over ------------------------------------------------------------


async def dispatch(call: Call, plan: Plan, first_key: PickedKey | None, receive, send) -> None:
    tried: list[PickedKey] = []
    try:
        failure = await _try_routes(call, plan, first_key, tried, receive, send)
    except GatewayError:
        raise
    except BaseException:
        # Whatever broke (a bug, a cancellation): settle as failed so the hold and the request's
        # lease on its key are released. After a settlement this is a no-op (idempotent).
        await _finish_failed(call, tried[-1] if tried else None, Failure("internal"))
        raise
    if failure is not None:
        await _finish_failed(call, tried[-1] if tried else None, failure)
        if failure.kind == "rejected":
            raise GatewayError(400, errors.UPSTREAM_REJECTED.format(status=failure.status), code="upstream_rejected")
        raise _final_error(call, failure)
    if not tried:
        await _finish_failed(call, None, None)
        raise _final_error(call, None)


async def _try_routes(
    call: Call, plan: Plan, first_key: PickedKey | None, tried: list[PickedKey], receive, send
) -> Failure | None:
    """Try keys route by route. None: answered and settled (or no key was found; `tried` tells)."""
    failure: Failure | None = None
    for position, route in enumerate(plan.routes):
        for attempt_number in range(settings.HEADROOM_MAX_UPSTREAM_ATTEMPTS):
            exclude = tuple(k.key_id for k in tried)
            if attempt_number > 0:
                key = await key_pick(caller=call.caller, target=call.target, route=route,
                                     include_exchange=plan.include_exchange, request_id=call.request_id,
                                     exclude=exclude)
            elif position == 0:
                key = first_key  # picked in the request's first hop
            else:
                # Fail-over from BYOK to the platform: it is charged, so it needs funds now.
                try:
                    key = await route_open(caller=call.caller, target=call.target, plan=plan, route=route,
                                           request_id=call.request_id, exclude=exclude)
                except GatewayError:
                    return failure
            if key is None:
                break
            if tried:
                await db_call(provider_key_release, key_id=tried[-1].key_id, request_id=call.request_id)
            tried.append(key)
            failure = await attempt(call, key, receive, send)
            if failure is None:
                return None  # answered and settled
            if failure.kind == "rejected":
                return failure  # the request itself is at fault: another key would fare no better
    return failure


async def _finish_failed(call: Call, key: PickedKey | None, failure: Failure | None) -> None:
    """Settle a request that never got an answer: nothing is charged, the hold is released."""
    await asyncio.shield(request_settle(s=settlement_of(
        call, key, Outcome.FAILED, Usage(0, 0),
        upstream_status=failure.status if failure else None,
        error_code=failure.kind if failure else "no_key",
    )))


def _final_error(call: Call, failure: Failure | None) -> GatewayError:
    model = call.target.requested
    if failure is None:
        return GatewayError(503, errors.NO_KEY.format(model=model), type="api_error", code="no_key_available")
    if failure.kind == "rate_limited":
        headers = {"retry-after": str(failure.retry_after)} if failure.retry_after else {}
        return GatewayError(429, errors.UPSTREAM_RATE_LIMITED.format(model=model), type="rate_limit_error",
                            code="upstream_rate_limited", headers=headers)
    if failure.kind == "timeout":
        return GatewayError(504, errors.UPSTREAM_TIMEOUT, type="api_error", code="upstream_timeout")
    if failure.kind == "unreachable":
        return GatewayError(502, errors.UPSTREAM_UNREACHABLE, type="api_error", code="upstream_unreachable")
    return GatewayError(502, errors.UPSTREAM_ERROR.format(status=failure.status), type="api_error",
                        code="upstream_error")


def _retry_after(value: str | None) -> int | None:
    if value and value.strip().isdigit():
        return min(int(value.strip()), 86_400)
    return None


async def _classify(response: aiohttp.ClientResponse, key: PickedKey) -> Failure:
    """Read and drop an upstream error body (it may echo the key); count against the key only what
    is about the key (pool.upstream_errors)."""
    body = b""
    with contextlib.suppress(Exception):
        body = await response.content.read(BODY_LIMIT)
    status = response.status
    blame = upstream_error_blame(status, body)
    if blame == Blame.RATE_LIMITED:
        retry_after = _retry_after(response.headers.get("Retry-After"))
        await db_call(provider_key_record_429, key_id=key.key_id, retry_after_seconds=retry_after)
        return Failure("rate_limited", status, retry_after)
    if blame == Blame.KEY_FAILED:
        await db_call(provider_key_record_failure, key_id=key.key_id, reason=f"upstream HTTP {status}")
        return Failure("key_failed", status)
    if blame == Blame.PROVIDER:
        return Failure("server", status)
    return Failure("rejected", status)


async def attempt(call: Call, key: PickedKey, receive, send) -> Failure | None:
    """One try on one key. None: the client got its answer and the request is settled."""
    url = f"{call.target.base_url}/{call.upstream_path}"
    try:
        response = await upstream.post(url, secret=key.secret, body=call.upstream_body)
    except asyncio.TimeoutError:
        return Failure("timeout")
    except aiohttp.ClientError:
        return Failure("unreachable")
    async with response:
        if response.status != 200:
            return await _classify(response, key)
        try:
            first = await response.content.readany()
        except asyncio.TimeoutError:
            return Failure("timeout")
        except aiohttp.ClientError:
            return Failure("server", 200)
        if not first:
            return Failure("server", 200)
        ttfb_ms = int((time.monotonic() - call.started) * 1000)
        await _record_success(key)
        if call.stream:
            await relay_stream(call, key, response, first, ttfb_ms, receive, send)
        else:
            await relay_json(call, key, response, first, ttfb_ms, send)
    return None


async def _record_success(key: PickedKey) -> None:
    if key.had_errors:
        await db_call(provider_key_record_success, key_id=key.key_id)
