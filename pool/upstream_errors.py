"""Whom an upstream error blames: the request, the key, or the provider.

Only what is about the key may count against it (README "Money integrity"): a shared key paused or
exhausted because one member sent an oversized request would stop serving everyone. Providers word
this differently, so the rule reads the status and the documented error body of each family:

- OpenAI: 429 `type: "tokens"` "Request too large for … tokens per min" is the request (it can never fit
  the key's per-minute budget); 429 `insufficient_quota` is the key's account; any other 429 a rate limit.
  https://platform.openai.com/docs/guides/error-codes
- Groq: 413 "Request too large" (code `rate_limit_exceeded`) is the request; 429 a rate limit.
- DeepSeek: 402 insufficient balance is the key; 400/422 the request.
  https://api-docs.deepseek.com/quick_start/error_codes
- Anthropic: 413 `request_too_large` and 400 "prompt is too long" are the request; 400 "credit balance is
  too low" is the key; 529 `overloaded_error` the provider. https://docs.claude.com/en/api/errors
- Gemini (OpenAI layer, a JSON list of Google errors): 429 RESOURCE_EXHAUSTED is a rate limit or the
  quota, indistinguishable, so a pause (which ends) rather than a failure; 400 INVALID_ARGUMENT the request.
- OpenRouter: 402 insufficient credits is the key.
- Z.ai answers 429 to everything; its business code tells: 1302 rate limit, 1113 no balance (the key),
  1305 the model busy for everyone (the provider).
- Everyone: 401/403 the key's credentials; 408 and 5xx the provider; 400, 404, 413, 422 the request.

The tests play each family's bodies (tests/fakeprovider/dialects.py cites where each was found).
"""

from enum import StrEnum

import orjson

BODY_LIMIT = 65_536  # what is read of an error body (it is dropped after: it may echo the key)


class Blame(StrEnum):
    REQUEST = "request"  # the request itself: another key would fare no better; the key is fine
    RATE_LIMITED = "rate_limited"  # the key's rate limit: pause it (it resumes)
    KEY_FAILED = "key_failed"  # the key's credentials, quota or credit: count a failure (it exhausts)
    PROVIDER = "provider"  # the provider is busy or broken: try the next key, blame no one


def _fields(body: bytes) -> tuple[str, str, str]:
    """(message, type, code) of an error body in any family's shape, lower-cased; "" when absent."""
    try:
        data = orjson.loads(body)
    except ValueError:
        return "", "", ""
    if isinstance(data, list) and data:
        data = data[0]  # Gemini's OpenAI layer: a list of Google error objects
    if not isinstance(data, dict):
        return "", "", ""
    error = data.get("error") if isinstance(data.get("error"), dict) else data  # Mistral: top level
    message, type_, code = error.get("message"), error.get("type") or error.get("status"), error.get("code")
    return tuple(str(value).lower() if isinstance(value, (str, int)) else "" for value in (message, type_, code))


QUOTA_CODES = ("insufficient_quota", "1113")
QUOTA_WORDS = ("credit balance is too low", "insufficient balance", "insufficient credits", "requires more credits")


def upstream_error_blame(status: int, body: bytes) -> Blame:
    if status in (401, 403):
        return Blame.KEY_FAILED
    if status == 408 or status >= 500:
        return Blame.PROVIDER
    message, type_, code = _fields(body)
    if status == 402 or code in QUOTA_CODES or type_ in QUOTA_CODES or any(w in message for w in QUOTA_WORDS):
        return Blame.KEY_FAILED
    if status == 429:
        if "request too large" in message:
            return Blame.REQUEST
        if code == "1305":
            return Blame.PROVIDER
        return Blame.RATE_LIMITED
    return Blame.REQUEST
