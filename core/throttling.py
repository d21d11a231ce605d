"""The management API's throttles (REST_FRAMEWORK's DEFAULT_THROTTLE_CLASSES, rates in settings).

Every request counts against its member (signed in or by API key) or, anonymous, against its client
IP; writes to a view with a `throttle_scope` (moving money, minting API keys) count against that
stricter scope too. The counts live in the default cache, Redis whenever REDIS_URL is set, so all
workers count together. A throttled request answers 429 with Retry-After and the API's one error
shape (core.exceptions: code "throttled").
"""

import logging

from allauth.account.adapter import get_adapter
from django.core.exceptions import PermissionDenied
from rest_framework.permissions import SAFE_METHODS
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, ScopedRateThrottle, UserRateThrottle

UNKNOWN_CLIENT = "unknown"
logger = logging.getLogger(__name__)


class _SettingsRates:
    # DRF copies the rates into a class attribute when it is imported; read them per request so a
    # settings override (tests, a deployment's settings module) reaches them.
    @property
    def THROTTLE_RATES(self) -> dict:  # noqa: N802 (DRF's name)
        return api_settings.DEFAULT_THROTTLE_RATES

    def allow_request(self, request, view) -> bool:
        # With the cache (Redis) down, count nothing and serve, as the gateway's own rate limit does
        # (pool.ratelimit): a limit that guards capacity must not turn a Redis outage into 500s.
        from redis import RedisError

        try:
            return super().allow_request(request, view)
        except RedisError as error:
            logger.warning("throttle %s not applied: cache unavailable (%s)", self.__class__.__name__,
                           error.__class__.__name__)
            return True

    def get_ident(self, request) -> str:
        # The login limiter's client-IP rule (trusted proxies: DJANGO_TRUSTED_PROXY_COUNT or
        # DJANGO_TRUSTED_CLIENT_IP_HEADER), not DRF's, which believes any X-Forwarded-For.
        try:
            return get_adapter(request).get_client_ip(request)
        except PermissionDenied:  # no client address at all (a unix socket, no trusted proxy): one count
            return UNKNOWN_CLIENT


class MemberRateThrottle(_SettingsRates, UserRateThrottle):
    """Scope "member": per member; anonymous requests fall back to the client IP."""

    scope = "member"


class AnonymousRateThrottle(_SettingsRates, AnonRateThrottle):
    """Scope "anon": per client IP, for the endpoints open without signing in."""


class SensitiveWriteThrottle(_SettingsRates, ScopedRateThrottle):
    """A view's `throttle_scope` ("money", "api_keys"), counted on writes only: reading a history
    moves nothing."""

    def allow_request(self, request, view) -> bool:
        if request.method in SAFE_METHODS:
            return True
        return super().allow_request(request, view)
