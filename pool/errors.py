"""OpenAI-style gateway errors: `{"error": {"message", "type", "param", "code"}}`.

Messages are ours, never a provider's: upstream error bodies can echo key
fragments, so they are read, classified and dropped.
"""

from dataclasses import dataclass, field


@dataclass
class GatewayError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


UNAUTHENTICATED = (
    "Missing or invalid API key. Send `Authorization: Bearer hr-…` with a Headroom API key that has the "
    "`gateway` scope."
)
NOT_JSON = "Send the request body as JSON with `Content-Type: application/json`."
BODY_TOO_LARGE = "The request body is larger than {limit} bytes."
MALFORMED_JSON = "The request body is not valid JSON."
TOO_DEEP = "The request body nests deeper than {limit} levels."
NOT_AN_OBJECT = "The request body must be a JSON object."
FORBIDDEN_FIELD = "`{field}` cannot be set through Headroom: upstream URLs, keys and headers are chosen by the gateway."
MODEL_REQUIRED = "`model` is required: use `provider/model` (e.g. `groq/llama-3.1-8b-instant`) or `provider-pool/model`."
MODEL_UNKNOWN = "The model `{model}` does not exist or has no price. GET /v1/models lists the routable models."
MESSAGES_REQUIRED = "`messages` must be a non-empty list of messages."
INPUT_REQUIRED = "`input` must be a string or a non-empty list."
BAD_FIELD = "`{field}` must be {kind}."
BAD_POOL_MODE = "`key_pool_mode` must be `any` or `platformOnly`."
POOL_GATE = (
    "The shared pool is for members who share a key. Donate an active key to the pool "
    "(POST /api/v1/keys with donate_to_pool=true and consent=true) to use `-pool` models."
)
POOL_PROVIDER_NOT_CLEARED = "The provider `{provider}` is not cleared for the shared pool."
INSUFFICIENT_BALANCE = "Your balance does not cover this request's worst-case cost (prompt plus max_tokens). Top up or lower max_tokens."
MONTHLY_LIMIT = "This API key has reached its monthly spend limit."
NO_KEY = (
    "No provider key can serve `{model}` right now. Add your own key for this provider "
    "(POST /api/v1/keys) or try again later."
)
RATE_LIMITED = "Too many requests for this API key. Slow down and retry after the Retry-After interval."
UPSTREAM_RATE_LIMITED = "The provider is rate-limiting every available key for `{model}`."
UPSTREAM_ERROR = "The provider returned an error (HTTP {status})."
BYOK_UNAVAILABLE = (
    "Your own {provider} key cannot serve this request now (paused, exhausted, failed, deactivated or removed),"
    " and this API key does not fall back to platform keys (byok_fallback is off). Reactivate or add a key for"
    " {provider}, or turn byok_fallback on."
)
UPSTREAM_REJECTED = (
    "The provider rejected the request (HTTP {status}): it is about this request (its parameters, its size or"
    " the model's context length), so no other key was tried. Check the parameters for this model."
)
UPSTREAM_TIMEOUT = "The provider did not answer in time."
UPSTREAM_UNREACHABLE = "The provider could not be reached."
STREAM_CUT = "The provider's stream ended unexpectedly."
NOT_FOUND = "Unknown endpoint `{path}`."
METHOD_NOT_ALLOWED = "Method {method} is not allowed on `{path}`."
INTERNAL = "Headroom failed to handle this request. It has been logged; please retry."
DATABASE_UNAVAILABLE = "Headroom's database is unreachable for a moment; nothing was charged. Retry shortly."
