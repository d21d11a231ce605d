"""Provider dialects: which cap field a provider reads, and how it words its errors.

Why dialects: the money invariant of issue 12 depends on details that differ between providers that
all call themselves "OpenAI-compatible" — which of ``max_completion_tokens`` / ``max_tokens`` bounds the
answer, and whether an error is about the *request* (too large, context length: the key is fine) or
about the *key* (rate limit, quota). A test picks a dialect per key (``fake.script(key,
dialect="groq")``), because keys are what the gateway chooses between and what the fake already scripts
per key (faults, balances); every key belongs to one provider, so a dialect per key is a dialect per
provider in practice, and one fake can play several providers in one test.

Error bodies were taken from the providers' documentation where it shows them, otherwise from replies
quoted verbatim in public issue threads; each family cites its source. Every body echoes a masked key
fragment where the real one names the organisation or key, as the tripwire described in ``wire.py``.

Error kinds (``fake.script(key, error=KIND)``):

- ``rate_limit``          key-level: the key's requests/tokens per minute are used up (retry later);
- ``insufficient_quota``  key-level: the account behind the key has no money/quota left;
- ``request_too_large``   request-level: this one request can never fit the key's per-minute budget;
- ``context_length``      request-level: prompt (+ cap) exceeds the model's context window;
- ``overloaded``          provider-level: the provider is busy (no fault of key or request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tests.fakeprovider.wire import dumps, mask_key

KEY_LEVEL = frozenset({"rate_limit", "insufficient_quota"})
REQUEST_LEVEL = frozenset({"request_too_large", "context_length"})
ERROR_KINDS = KEY_LEVEL | REQUEST_LEVEL | {"overloaded"}


@dataclass(frozen=True)
class ErrorContext:
    """What an error body may quote about the request that caused it."""

    key: str | None
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0  # the cap asked for
    context_window: int = 0
    limit: int = 30_000  # the key's tokens per minute, for "request too large"
    retry_after: float | None = None


ErrorBuilder = Callable[[ErrorContext], tuple[int, bytes]]


def _oa(message: str, type_: str | None, code: str | None, param: str | None = None) -> bytes:
    return dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _wait(ctx: ErrorContext) -> str:
    return f" Please try again in {ctx.retry_after:g}s." if ctx.retry_after is not None else ""


# --- OpenAI -------------------------------------------------------------------------------------------
# https://platform.openai.com/docs/guides/error-codes (429 rate limit vs quota); bodies as quoted
# verbatim: quota as the body itself words it, linking to the error-codes page above (type and code
# "insufficient_quota"), context length in
# https://github.com/mckaywrigley/chatbot-ui/issues/102 (400, param "messages", code
# "context_length_exceeded"), "Request too large" in https://github.com/Aider-AI/aider/issues/1880 and
# https://github.com/TheR1D/shell_gpt/issues/653 (429, type "tokens", code "rate_limit_exceeded").


def _openai_rate_limit(ctx: ErrorContext) -> tuple[int, bytes]:
    msg = (f"Rate limit reached for {ctx.model} in organization org-fake on requests per min (RPM): "
           f"Limit 500, Used 500, Requested 1 (key {mask_key(ctx.key)}).{_wait(ctx)} "
           "Visit https://platform.openai.com/account/rate-limits to learn more.")
    return 429, _oa(msg, "requests", "rate_limit_exceeded")


def _openai_too_large(ctx: ErrorContext) -> tuple[int, bytes]:
    requested = ctx.prompt_tokens + ctx.completion_tokens
    msg = (f"Request too large for {ctx.model} in organization org-fake on tokens per min (TPM): "
           f"Limit {ctx.limit}, Requested {requested}. The input or output tokens must be reduced in order "
           f"to run successfully. Visit https://platform.openai.com/account/rate-limits to learn more.")
    return 429, _oa(msg, "tokens", "rate_limit_exceeded")


def _openai_context(ctx: ErrorContext) -> tuple[int, bytes]:
    msg = (f"This model's maximum context length is {ctx.context_window} tokens. However, you requested "
           f"{ctx.prompt_tokens + ctx.completion_tokens} tokens ({ctx.prompt_tokens} in the messages, "
           f"{ctx.completion_tokens} in the completion). Please reduce the length of the messages or completion.")
    return 400, _oa(msg, "invalid_request_error", "context_length_exceeded", "messages")


def _openai_quota(ctx: ErrorContext) -> tuple[int, bytes]:
    msg = (f"You exceeded your current quota (key {mask_key(ctx.key)}), please check your plan and billing "
           "details. For more information on this error, read the docs: "
           "https://platform.openai.com/docs/guides/error-codes/api-errors.")
    return 429, _oa(msg, "insufficient_quota", "insufficient_quota")


def _openai_overloaded(ctx: ErrorContext) -> tuple[int, bytes]:
    msg = "The engine is currently overloaded, please try again later."
    return 503, _oa(msg, "server_error", None)


OPENAI_ERRORS: dict[str, ErrorBuilder] = {
    "rate_limit": _openai_rate_limit,
    "request_too_large": _openai_too_large,
    "context_length": _openai_context,
    "insufficient_quota": _openai_quota,
    "overloaded": _openai_overloaded,
}

# --- Groq ---------------------------------------------------------------------------------------------
# Bodies as quoted verbatim in https://github.com/assafelovic/gpt-researcher/issues/985 and
# https://github.com/HunorLaczko/ha-groq-cloud-api/issues/27: a request that can never fit the TPM
# budget is a **413** with code "rate_limit_exceeded" (not a 429), and Groq bodies carry no "param";
# context length as quoted in https://github.com/OpenHands/OpenHands/issues/1902 (400,
# code "context_length_exceeded"). The 503 wording is illustrative.


def _groq(message: str, type_: str, code: str | None) -> bytes:
    return dumps({"error": {"message": message, "type": type_, "code": code}})


def _groq_rate_limit(ctx: ErrorContext) -> tuple[int, bytes]:
    msg = (f"Rate limit reached for model `{ctx.model}` in organization `org_fake` service tier `on_demand` "
           f"on tokens per minute (TPM): Limit {ctx.limit}, Used {ctx.limit}, Requested 1 "
           f"(key {mask_key(ctx.key)}).{_wait(ctx)} Visit https://console.groq.com/docs/rate-limits for more information.")
    return 429, _groq(msg, "tokens", "rate_limit_exceeded")


def _groq_too_large(ctx: ErrorContext) -> tuple[int, bytes]:
    msg = (f"Request too large for model `{ctx.model}` in organization `org_fake` service tier `on_demand` on "
           f"tokens per minute (TPM): Limit {ctx.limit}, Requested {ctx.prompt_tokens + ctx.completion_tokens}, "
           "please reduce your message size and try again. Visit https://console.groq.com/docs/rate-limits "
           "for more information.")
    return 413, _groq(msg, "tokens", "rate_limit_exceeded")


def _groq_context(ctx: ErrorContext) -> tuple[int, bytes]:
    msg = "Please reduce the length of the messages or completion."
    return 400, dumps({"error": {"message": msg, "type": "invalid_request_error", "param": "messages",
                                 "code": "context_length_exceeded"}})


def _groq_overloaded(ctx: ErrorContext) -> tuple[int, bytes]:
    return 503, _groq("Service Unavailable", "internal_server_error", "service_unavailable")


GROQ_ERRORS: dict[str, ErrorBuilder] = {
    "rate_limit": _groq_rate_limit,
    "request_too_large": _groq_too_large,
    "context_length": _groq_context,
    "overloaded": _groq_overloaded,
}

# --- DeepSeek -----------------------------------------------------------------------------------------
# https://api-docs.deepseek.com/quick_start/error_codes : 400 invalid format, 402 insufficient balance,
# 422 invalid parameters, 429 rate limit reached, 503 server overloaded (wording of the 429/503 bodies
# from that table). The body shape (OpenAI-like, code "invalid_request_error") and the context-length
# wording as quoted verbatim in
# https://github.com/evalstate/fast-agent/issues/621 (a 400 whose code is NOT "context_length_exceeded").


def _deepseek_rate_limit(ctx: ErrorContext) -> tuple[int, bytes]:
    return 429, _oa(f"Rate Limit Reached (key {mask_key(ctx.key)})", "rate_limit_error", "rate_limit_reached")


def _deepseek_context(ctx: ErrorContext) -> tuple[int, bytes]:
    msg = (f"This model's maximum context length is {ctx.context_window} tokens. However, you requested "
           f"{ctx.prompt_tokens + ctx.completion_tokens} tokens ({ctx.prompt_tokens} in the messages, "
           f"{ctx.completion_tokens} in the completion). Please reduce the length of the messages or completion.")
    return 400, _oa(msg, "invalid_request_error", "invalid_request_error")


def _deepseek_quota(ctx: ErrorContext) -> tuple[int, bytes]:
    return 402, _oa(f"Insufficient Balance on key {mask_key(ctx.key)}", "unknown_error", "invalid_request_error")


def _deepseek_overloaded(ctx: ErrorContext) -> tuple[int, bytes]:
    return 503, _oa("Server Overloaded", "server_error", "server_overloaded")


DEEPSEEK_ERRORS: dict[str, ErrorBuilder] = {
    "rate_limit": _deepseek_rate_limit,
    "context_length": _deepseek_context,
    "insufficient_quota": _deepseek_quota,
    "overloaded": _deepseek_overloaded,
}

# --- Mistral ------------------------------------------------------------------------------------------
# 429 body as quoted verbatim in https://github.com/cline/cline/issues/9085 and
# https://github.com/raycast/extensions/issues/31107 ({"object": "error", ..., "type": "rate_limited",
# "code": "1300"}). No other Mistral error body was found documented, so no other kind is offered.


def _mistral(message: str, type_: str, code: str | None) -> bytes:
    return dumps({"object": "error", "message": message, "type": type_, "param": None, "code": code})


def _mistral_rate_limit(ctx: ErrorContext) -> tuple[int, bytes]:
    return 429, _mistral("Rate limit exceeded", "rate_limited", "1300")


MISTRAL_ERRORS: dict[str, ErrorBuilder] = {"rate_limit": _mistral_rate_limit}

# --- Gemini (OpenAI compatibility endpoint) --------------------------------------------------------------
# The OpenAI-compatible endpoint answers with a JSON *list* of Google error objects, as quoted verbatim in
# https://github.com/n4ze3m/page-assist/issues/406 and (context length)
# https://github.com/google-gemini/gemini-cli/issues/6678. Rate limits and quota share one status
# (RESOURCE_EXHAUSTED), so a gateway cannot tell them apart. The 503 wording is illustrative.


def _gemini(code: int, message: str, status: str) -> bytes:
    return dumps([{"error": {"code": code, "message": message, "status": status}}])


def _gemini_rate_limit(ctx: ErrorContext) -> tuple[int, bytes]:
    return 429, _gemini(429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED")


def _gemini_quota(ctx: ErrorContext) -> tuple[int, bytes]:
    msg = ("You exceeded your current quota, please check your plan and billing details. For more information "
           "on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.")
    return 429, _gemini(429, msg, "RESOURCE_EXHAUSTED")


def _gemini_context(ctx: ErrorContext) -> tuple[int, bytes]:
    msg = (f"The input token count ({ctx.prompt_tokens}) exceeds the maximum number of tokens allowed "
           f"({ctx.context_window}).")
    return 400, _gemini(400, msg, "INVALID_ARGUMENT")


def _gemini_overloaded(ctx: ErrorContext) -> tuple[int, bytes]:
    return 503, _gemini(503, "The model is overloaded. Please try again later.", "UNAVAILABLE")


GEMINI_ERRORS: dict[str, ErrorBuilder] = {
    "rate_limit": _gemini_rate_limit,
    "insufficient_quota": _gemini_quota,
    "context_length": _gemini_context,
    "overloaded": _gemini_overloaded,
}

# --- Anthropic ----------------------------------------------------------------------------------------
# https://docs.claude.com/en/api/errors : {"type": "error", "error": {"type": ..., "message": ...},
# "request_id": ...}; 413 request_too_large is about *bytes* (32 MB, answered by Cloudflare), 429
# rate_limit_error, 529 overloaded_error. Context length: 400 invalid_request_error "prompt is too long:
# N tokens > M maximum", as quoted verbatim in https://github.com/anthropics/claude-code/issues/62560.
# Credit exhausted: 400 invalid_request_error "Your credit balance is too low ...".


def _anthropic(status: int, type_: str, message: str) -> tuple[int, bytes]:
    return status, dumps({"type": "error", "error": {"type": type_, "message": message},
                          "request_id": "req_fake000000000000000000"})


def _anthropic_rate_limit(ctx: ErrorContext) -> tuple[int, bytes]:
    return _anthropic(429, "rate_limit_error", "This request would exceed the rate limit for your organization "
                      f"(key {mask_key(ctx.key)}) of 50 requests per minute.")


def _anthropic_too_large(ctx: ErrorContext) -> tuple[int, bytes]:
    return _anthropic(413, "request_too_large", "Request exceeds the maximum allowed number of bytes.")


def _anthropic_context(ctx: ErrorContext) -> tuple[int, bytes]:
    return _anthropic(400, "invalid_request_error",
                      f"prompt is too long: {ctx.prompt_tokens} tokens > {ctx.context_window} maximum")


def _anthropic_quota(ctx: ErrorContext) -> tuple[int, bytes]:
    return _anthropic(400, "invalid_request_error", "Your credit balance is too low to access the Anthropic API. "
                      "Please go to Plans & Billing to upgrade or purchase credits.")


def _anthropic_overloaded(ctx: ErrorContext) -> tuple[int, bytes]:
    return _anthropic(529, "overloaded_error", "Overloaded")


ANTHROPIC_ERRORS: dict[str, ErrorBuilder] = {
    "rate_limit": _anthropic_rate_limit,
    "request_too_large": _anthropic_too_large,
    "context_length": _anthropic_context,
    "insufficient_quota": _anthropic_quota,
    "overloaded": _anthropic_overloaded,
}

# --- OpenRouter ---------------------------------------------------------------------------------------
# https://openrouter.ai/docs/api/reference/errors-and-debugging : {"error": {"code": <int status>,
# "message": ..., "metadata": {...}}}, the HTTP status equal to error.code; 402 when the account or key
# has insufficient credits, 429 rate limited, 400 bad request, 503 no provider available. The messages
# are illustrative (the docs give codes, not wordings).


def _openrouter(status: int, message: str) -> tuple[int, bytes]:
    return status, dumps({"error": {"code": status, "message": message, "metadata": {"provider_name": None}}})


OPENROUTER_ERRORS: dict[str, ErrorBuilder] = {
    "rate_limit": lambda ctx: _openrouter(429, f"Rate limit exceeded: limit_rpm/{ctx.model} (key {mask_key(ctx.key)})"),
    "insufficient_quota": lambda ctx: _openrouter(
        402, "This request requires more credits, or fewer max_tokens. You requested up to "
        f"{ctx.completion_tokens} tokens, but can only afford 0. To increase, visit https://openrouter.ai/settings/credits"),
    "context_length": lambda ctx: _openrouter(
        400, f"This endpoint's maximum context length is {ctx.context_window} tokens. However, you requested about "
        f"{ctx.prompt_tokens + ctx.completion_tokens} tokens ({ctx.prompt_tokens} of text input, "
        f"{ctx.completion_tokens} in the output). Please reduce the length of either one."),
    "overloaded": lambda ctx: _openrouter(503, "No available model provider that meets your routing requirements."),
}


# --- Z.ai (Zhipu GLM) ----------------------------------------------------------------------------------
# Z.ai answers **429 for everything** with {"error": {"code": "<business code>", "message": ...}}: 1302 the
# account's rate limit (https://github.com/yilewang/llm-for-zotero/issues/17), 1113 no balance or
# resource package — key-level and permanent, not a rate limit (https://github.com/iOfficeAI/AionUi/issues/557,
# https://github.com/langgenius/dify/issues/5850), 1305 the model is busy for everyone — about neither the
# key nor the request (https://github.com/HKUDS/nanobot/pull/3864). Only the business code tells them apart.


def _zai(code: str, message: str) -> tuple[int, bytes]:
    return 429, dumps({"error": {"code": code, "message": message}, "request_id": "20261203000000fake"})


ZAI_ERRORS: dict[str, ErrorBuilder] = {
    "rate_limit": lambda ctx: _zai("1302", "您的账户已达到速率限制，请您控制请求频率"),
    "insufficient_quota": lambda ctx: _zai("1113", "余额不足或无可用资源包,请充值。"),
    "overloaded": lambda ctx: _zai("1305", "该模型当前访问量过大，请您稍后再试"),
}


# --- dialects -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dialect:
    """``cap_fields``: the body fields the provider reads as the completion cap, first present wins."""

    name: str
    cap_fields: tuple[str, ...]
    errors: dict[str, ErrorBuilder]

    def cap(self, body: dict) -> tuple[int | None, str | None]:
        """(cap, field it came from) as this provider reads ``body``; (None, None) when uncapped.

        Only a JSON integer is a cap: ``null``, ``5.0``, ``"5"`` or ``true`` fall through to the next field
        and finally to "uncapped" — the most expensive reading, so a gateway must send plain integers.
        """
        for field in self.cap_fields:
            value = body.get(field)
            if isinstance(value, int) and not isinstance(value, bool):
                return value, field
        return None, None

    def error(self, kind: str, ctx: ErrorContext) -> tuple[int, bytes]:
        return self.errors[kind](ctx)


BOTH = ("max_completion_tokens", "max_tokens")
ONLY_MAX_TOKENS = ("max_tokens",)

DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (
        # OpenAI: max_completion_tokens, then the deprecated max_tokens
        # (https://platform.openai.com/docs/api-reference/chat/create).
        Dialect("openai", BOTH, OPENAI_ERRORS),
        # The generic OpenAI-compatible server that predates max_completion_tokens (vLLM-era clones,
        # many hosted Llama/Qwen endpoints): max_completion_tokens is an unknown field and ignored.
        Dialect("max_tokens_only", ONLY_MAX_TOKENS, OPENAI_ERRORS),
        # Groq documents max_completion_tokens with max_tokens deprecated (groq-python PR #175).
        Dialect("groq", BOTH, GROQ_ERRORS),
        # DeepSeek's and Mistral's chat APIs document only max_tokens.
        Dialect("deepseek", ONLY_MAX_TOKENS, DEEPSEEK_ERRORS),
        Dialect("mistral", ONLY_MAX_TOKENS, MISTRAL_ERRORS),
        # Gemini's and Anthropic's OpenAI layers: treated as max_tokens-only (the stricter reading), as
        # neither is verified here to honour max_completion_tokens.
        Dialect("gemini", ONLY_MAX_TOKENS, GEMINI_ERRORS),
        Dialect("anthropic", ONLY_MAX_TOKENS, ANTHROPIC_ERRORS),
        Dialect("openrouter", BOTH, OPENROUTER_ERRORS),
        # Z.ai's chat API takes max_tokens; treated as its only cap field.
        Dialect("zai", ONLY_MAX_TOKENS, ZAI_ERRORS),
    )
}


def get(dialect: str | Dialect) -> Dialect:
    if isinstance(dialect, Dialect):
        return dialect
    try:
        return DIALECTS[dialect]
    except KeyError:
        raise ValueError(f"unknown dialect {dialect!r}; known: {', '.join(DIALECTS)}") from None
