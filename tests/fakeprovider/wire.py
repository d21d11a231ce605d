"""Response bodies in the providers' real wire formats.

Why a separate module: the server decides *when* and *whether* to answer (scripts, faults, delays);
this module only knows *what* a real provider's reply looks like, so each shape can be compared with
the provider's documentation in one place. Everything here is pure and deterministic: the same request
always yields the same content, token counts and embeddings, so tests can assert exact settlements.

Shapes (checked against the providers' docs):
- OpenAI chat completion, ``chat.completion.chunk`` SSE events and the ``include_usage`` final chunk,
  with ``n`` choices and every delta kind (``content``, ``reasoning_content``, ``refusal``, ``tool_calls``);
- OpenAI embeddings (``float`` or ``base64`` little-endian float32, which the openai SDK asks for by default);
- balance replies of DeepSeek ``/user/balance``, OpenRouter ``/key`` and ``/credits``, Moonshot
  ``/users/me/balance`` and SiliconFlow ``/user/info``;
- error bodies. Real providers often echo part of the key ("Incorrect API key provided: sk-ab****xyz9");
  the fake does so in *every* error body, on purpose, as a tripwire: the gateway must never relay it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import struct
from decimal import Decimal

DONE_EVENT = b"data: [DONE]\n\n"
_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


def dumps(obj: object) -> bytes:
    return _DUMPS(obj).encode()


def mask_key(key: str | None) -> str:
    """The fragment a provider echoes, e.g. ``sk-ab****xyz9``; tests assert it never reaches a client."""
    if not key:
        return "<none>"
    if len(key) < 12:
        return "****" + key[-4:]
    return f"{key[:5]}****{key[-4:]}"


def _words(text: object) -> int:
    if isinstance(text, str):
        return len(text.split())
    if isinstance(text, list):  # content parts: [{"type": "text", "text": "..."}]
        return sum(_words(part.get("text")) for part in text if isinstance(part, dict))
    return 0


def count_prompt_tokens(messages: object) -> int:
    """Whitespace-separated words across the messages' content, at least 1.

    The *friendly* count, kept because tests in tests/pool assert exact figures built on it; it is far
    below what a real provider bills. Keys scripted ``billing="realistic"`` use ``billing.prompt_tokens``.
    """
    if not isinstance(messages, list):
        return 1
    return max(1, sum(_words(m.get("content")) for m in messages if isinstance(m, dict)))


def content_piece(index: int) -> str:
    """Chunk ``index`` of the deterministic answer; joined they read ``tok0 tok1 tok2 ...``."""
    return f"tok{index}" if index == 0 else f" tok{index}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    *, rid: str, model: str, created: int, n_tokens: int, prompt_tokens: int, finish_reason: str
) -> bytes:
    """The default answer: one choice of ``n_tokens`` content tokens ``tok0 tok1 ...``."""
    content = "".join(content_piece(i) for i in range(n_tokens))
    message = {"role": "assistant", "content": content, "refusal": None}
    return chat_completion_choices(rid=rid, model=model, created=created, choices=[(message, finish_reason)],
                                   prompt_tokens=prompt_tokens, completion_tokens=n_tokens)


# --- scripted answers: every delta kind, n choices --------------------------------------------------

DELTA_KINDS = ("content", "reasoning_content", "refusal", "tool_calls")
TOOL_NAME = "fake_tool"


def _text_piece(kind: str, index: int) -> str:
    word = {"content": "tok", "reasoning_content": "why", "refusal": "no"}[kind]
    return f"{word}{index}" if index == 0 else f" {word}{index}"


def _arguments_piece(index: int, count: int) -> str:
    """Piece ``index`` of a tool call's arguments; all ``count`` joined are a JSON object."""
    if count == 1:
        return "{}"
    if index == 0:
        return '{"q":"'
    if index == count - 1:
        return '"}'
    return f"a{index} "


def answer_deltas(segments: tuple, limit: int | None) -> tuple[list[dict], bool]:
    """The delta of every streamed event of one choice, at most ``limit``; and whether it was cut short.

    ``segments`` is a sequence of ``(kind, count)`` (or ``("tool_calls", count, name)``): ``count`` events
    of that kind, one completion token each. Each ``tool_calls`` segment is one tool call whose first
    event carries its id, type and function name.
    """
    deltas: list[dict] = []
    tool = -1
    for segment in segments:
        kind, count = segment[0], segment[1]
        if kind == "tool_calls":
            tool += 1
            name = segment[2] if len(segment) > 2 else TOOL_NAME
        for i in range(count):
            if limit is not None and len(deltas) >= limit:
                return deltas, True
            if kind == "tool_calls":
                call: dict = {"index": tool, "function": {"arguments": _arguments_piece(i, count)}}
                if i == 0:
                    call = {"index": tool, "id": f"call_fake{tool}", "type": "function",
                            "function": {"name": name, "arguments": _arguments_piece(0, count)}}
                deltas.append({"tool_calls": [call]})
            else:
                deltas.append({kind: _text_piece(kind, i)})
    return deltas, False


def finish_reason_of(segments: tuple, truncated: bool) -> str:
    if truncated:
        return "length"
    kinds = [s[0] for s in segments if s[1] > 0]
    return "tool_calls" if kinds and kinds[-1] == "tool_calls" else "stop"


def message_of(deltas: list[dict]) -> dict:
    """The non-streamed ``message`` that the same events add up to."""
    text: dict[str, list[str]] = {"content": [], "reasoning_content": [], "refusal": []}
    calls: list[dict] = []
    for delta in deltas:
        for call in delta.get("tool_calls", ()):
            if "id" in call:
                calls.append({"id": call["id"], "type": "function",
                              "function": {"name": call["function"]["name"], "arguments": ""}})
            calls[call["index"]]["function"]["arguments"] += call["function"]["arguments"]
        for kind, pieces in text.items():
            if kind in delta:
                pieces.append(delta[kind])
    message: dict = {
        "role": "assistant",
        "content": "".join(text["content"]) if text["content"] or not (calls or text["refusal"]) else None,
        "refusal": "".join(text["refusal"]) if text["refusal"] else None,
    }
    if text["reasoning_content"]:
        message["reasoning_content"] = "".join(text["reasoning_content"])
    if calls:
        message["tool_calls"] = calls
    return message


def chat_completion_choices(
    *, rid: str, model: str, created: int, choices: list[tuple[dict, str]], prompt_tokens: int,
    completion_tokens: int, with_usage: bool = True,
) -> bytes:
    """A chat completion with one choice per ``(message, finish_reason)`` (``with_usage=False``: no
    ``usage`` object, as some OpenAI-compatible servers answer)."""
    body = {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
            for i, (message, finish) in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
        "system_fingerprint": "fp_fake",
    }
    if not with_usage:
        del body["usage"]
    return dumps(body)


def sse(obj: dict) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def chunk(
    *, rid: str, model: str, created: int, delta: dict, finish_reason: str | None, with_usage_field: bool,
    index: int = 0,
) -> bytes:
    body = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if with_usage_field:  # OpenAI sends "usage": null on every chunk but the last when include_usage is on
        body["usage"] = None
    return sse(body)


def usage_chunk(*, rid: str, model: str, created: int, prompt_tokens: int, completion_tokens: int) -> bytes:
    return sse(
        {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [],
            "usage": usage(prompt_tokens, completion_tokens),
        }
    )


def _vector(text: str, dims: int) -> list[float]:
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    raw = struct.pack(f"<{dims}f", *(rng.uniform(-1.0, 1.0) for _ in range(dims)))
    return list(struct.unpack(f"<{dims}f", raw))  # float32-exact, so float and base64 agree


def embeddings(*, inputs: list[str], model: str, dims: int, encoding_format: str, prompt_tokens: int) -> bytes:
    data = []
    for index, text in enumerate(inputs):
        vector = _vector(text, dims)
        if encoding_format == "base64":
            encoded: object = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        else:
            encoded = vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    )


def models_list(model_ids: tuple[str, ...], created: int) -> bytes:
    return dumps(
        {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": created, "owned_by": "fakeprovider"} for m in model_ids],
        }
    )


# --- errors ---------------------------------------------------------------------------------------


def openai_error(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def invalid_key_error(route: str, key: str | None) -> tuple[bytes, str]:
    """(body, content type) of a 401 as the provider behind ``route`` words it."""
    masked = mask_key(key)
    if route == "deepseek_balance":
        body = {
            "error": {
                "message": f"Authentication Fails, Your api key: {masked} is invalid",
                "type": "authentication_error",
                "param": None,
                "code": "invalid_request_error",
            }
        }
    elif route in ("openrouter_key", "openrouter_credits"):
        body = {"error": {"message": f"User not found. ({masked})", "code": 401}}
    elif route == "moonshot_balance":
        body = {"error": {"message": f"Invalid Authentication: {masked}", "type": "invalid_authentication_error"}}
    elif route == "siliconflow_user_info":
        return f'"Api key is invalid: {masked}"'.encode(), "application/json"
    else:
        body = {
            "error": {
                "message": f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    return dumps(body), "application/json"


def status_error(status: int, key: str | None, retry_after: float | None) -> bytes:
    masked = mask_key(key)
    if status == 402:
        return openai_error(f"Insufficient Balance on key {masked}", "unknown_error", "invalid_request_error")
    if status == 403:
        return openai_error(f"Key {masked} may not access this resource.", "permission_error", "forbidden")
    if status == 429:
        wait = f" Please try again in {retry_after:g}s." if retry_after is not None else ""
        return openai_error(
            f"Rate limit reached for requests on key {masked}.{wait}", "requests", "rate_limit_exceeded"
        )
    if status >= 500:
        return openai_error(
            f"The server had an error while processing your request (key {masked}). Sorry about that!",
            "server_error",
            None,
        )
    return openai_error(f"Request failed for key {masked}.", "invalid_request_error", None)


# --- balance replies --------------------------------------------------------------------------------

MALFORMED_BALANCE = b'{"is_available": tru, "balance_infos": [{"currency": "USD", "total_bal'


def deepseek_balance(amount: Decimal, currency: str) -> bytes:
    return dumps(
        {
            "is_available": amount > 0,
            "balance_infos": [
                {
                    "currency": currency,
                    "total_balance": str(amount),
                    "granted_balance": "0.00",
                    "topped_up_balance": str(amount),
                }
            ],
        }
    )


def openrouter_key(amount: Decimal, key: str, unlimited: bool) -> bytes:
    limit = None if unlimited else float(amount)
    return dumps(
        {
            "data": {
                "label": mask_key(key).replace("****", "..."),
                "limit": limit,
                "usage": 0.0,
                "usage_daily": 0.0,
                "usage_weekly": 0.0,
                "usage_monthly": 0.0,
                "limit_remaining": limit,
                "limit_reset": None,
                "is_free_tier": False,
                "is_provisioning_key": False,
                "rate_limit": {"requests": -1, "interval": "10s"},
            }
        }
    )


OPENROUTER_FAKE_USAGE = Decimal("1.25")


def openrouter_credits(amount: Decimal) -> bytes:
    """Purchased minus used equals ``amount``: total_credits = amount + 1.25, total_usage = 1.25."""
    return dumps(
        {"data": {"total_credits": float(amount + OPENROUTER_FAKE_USAGE), "total_usage": float(OPENROUTER_FAKE_USAGE)}}
    )


def moonshot_balance(amount: Decimal) -> bytes:
    return dumps(
        {
            "code": 0,
            "data": {"available_balance": float(amount), "voucher_balance": 0.0, "cash_balance": float(amount)},
            "scode": "0x0",
            "status": True,
        }
    )


def siliconflow_user_info(amount: Decimal) -> bytes:
    return dumps(
        {
            "code": 20000,
            "message": "OK",
            "status": True,
            "data": {
                "id": "userid",
                "name": "fakeprovider",
                "image": "",
                "email": "",
                "isAdmin": False,
                "balance": "0.00",
                "status": "normal",
                "introduction": "",
                "role": "",
                "chargeBalance": str(amount),
                "totalBalance": str(amount),
            },
        }
    )
