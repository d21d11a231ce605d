"""Who may call a management endpoint with what: API-key scopes and the recent sign-in money needs.

Both are DRF permissions in the default permission classes (config/settings), so every endpoint gets
them without remembering to: a view states what an API key needs with `api_key_scopes`, and a view
that states nothing is closed to API keys.
"""

import time
from types import SimpleNamespace

from allauth.account.internal.flows.login import get_authentication_records
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import SAFE_METHODS, BasePermission

from accounts.models import ApiKey

API_KEY_NOT_ALLOWED = "This endpoint does not take API keys: sign in to the dashboard or use a session token."
API_KEY_SCOPE_MISSING = (
    "This API key lacks the `{scope}` scope. Create a key with it on the dashboard (API keys) or through "
    "POST /api/v1/api-keys with \"scopes\"."
)
SIGN_IN_AGAIN = (
    "Moving money out needs a recent sign-in: sign in again (or reauthenticate, "
    "POST /_allauth/{client}/v1/auth/reauthenticate) and retry within {minutes} minutes."
)


def api_key_of(request) -> ApiKey | None:
    """The gateway API key that authenticated the request, if one did (accounts.authentication)."""
    return request.auth if isinstance(request.auth, ApiKey) else None


class ApiKeyScopes(BasePermission):
    """A request authenticated by an API key needs the scope its view names for the method's kind:
    `api_key_scopes = {"read": Scope.READ, "write": Scope.KEYS}`. A kind the view does not name is
    refused, so a new endpoint is closed to API keys until someone decides. A session (the dashboard,
    allauth's session token) is the member themself and passes."""

    def has_permission(self, request, view) -> bool:
        api_key = api_key_of(request)
        if api_key is None:
            return True
        kind = "read" if request.method in SAFE_METHODS else "write"
        scope = getattr(view, "api_key_scopes", {}).get(kind)
        if scope is None:
            raise PermissionDenied(API_KEY_NOT_ALLOWED, code="api_key_not_allowed")
        if scope not in api_key.scopes:
            raise PermissionDenied(API_KEY_SCOPE_MISSING.format(scope=scope), code="scope_required")
        return True


def signed_in_recently(request) -> bool:
    """Whether the session behind the request (a page's or the API's) recorded a sign-in or
    reauthentication (any method allauth records) within HEADROOM_MONEY_SIGN_IN_SECONDS. allauth keeps
    those records in the session; with an `X-Session-Token`, DRF's `request.auth` is that token's."""
    auth = getattr(request, "auth", None)  # a DRF request's; a page's request has none
    session = auth if isinstance(auth, SessionBase) else getattr(request, "session", None)
    if session is None or not request.user.is_authenticated:
        return False
    records = get_authentication_records(SimpleNamespace(session=session), request.user)
    latest = max((record.get("at", 0) for record in records), default=0)
    return time.time() - latest < settings.HEADROOM_MONEY_SIGN_IN_SECONDS


class RecentSignInToMoveMoneyOut(BasePermission):
    """Writes to a view that moves money out (withdrawals) need a session with a recent sign-in: never
    an API key, whatever its scopes, and not a session left open on a shared machine."""

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS:
            return True
        if api_key_of(request) is not None:
            raise PermissionDenied(API_KEY_NOT_ALLOWED, code="api_key_not_allowed")
        if not signed_in_recently(request):
            client = "app" if isinstance(request.auth, SessionBase) else "browser"
            minutes = max(1, settings.HEADROOM_MONEY_SIGN_IN_SECONDS // 60)
            raise PermissionDenied(
                SIGN_IN_AGAIN.format(client=client, minutes=minutes), code="reauthentication_required"
            )
        return True
