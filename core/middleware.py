"""Hostile input that Django, DRF and allauth would answer with a 500, answered with a clear 400.

Every management and sign-in endpoint parses JSON with the standard library, which gives up on deep
nesting (`[[[[…` 100,000 deep) with a RecursionError rather than a ValueError, so no parser turns it
into a 400; and a NUL character in a query parameter reaches PostgreSQL, which refuses it with an
error the view does not expect. Caught here once, for every endpoint present and future. (`/v1` is
not served through Django's middleware: the gateway parses with orjson, which refuses nesting past
1,024 levels as malformed JSON.)
"""

import hashlib
import time

from django.conf import settings
from django.core.cache import cache
from django.http import JsonResponse

JSON_TOO_DEEP = "The JSON body is nested too deeply."
NUL_IN_PARAMETER = "Query parameter {name!r} contains a NUL character."
ALLAUTH_PREFIX = "/_allauth/"


def _bad_request(request, message: str, *, field: str | None = None) -> JsonResponse:
    if request.path.startswith(ALLAUTH_PREFIX):  # allauth's headless error shape
        error = {"message": message, "code": "invalid"}
        if field is not None:
            error["param"] = field
        return JsonResponse({"status": 400, "errors": [error]}, status=400)
    body = {"detail": message if field is None else f"{field}: {message}", "code": "invalid"}
    if field is not None:
        body["fields"] = {field: [message]}
    return JsonResponse(body, status=400)


class HostileInputMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        for name, values in request.GET.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                return _bad_request(request, NUL_IN_PARAMETER.format(name=name.replace("\x00", "")),
                                    field=name.replace("\x00", ""))
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, RecursionError) and request.content_type == "application/json":
            return _bad_request(request, JSON_TOO_DEEP)
        return None


SESSION_BUSY = "Another request of this session is still in progress; retry when it has finished."
SIGN_IN_PREFIXES = (ALLAUTH_PREFIX, "/accounts/")
STEP_LOCK_SECONDS = 30  # longer than any sign-in step takes; a lock left by a dead process expires
STEP_WAIT_SECONDS = 10
STEP_POLL_SECONDS = 0.02


class OneSignInStepPerSessionMiddleware:
    """Runs a session's sign-in steps (allauth's POSTs: verify a code, log in, reauthenticate …) one at a
    time, from reading the session to saving it.

    allauth reads the session, acts, and writes it back at the end; two submissions of one code racing
    (a double click, a retrying client) both act on the same stale session, and the loser fails with a
    500 — allauth's "should not happen" when the address was verified under it, or Django's UpdateError
    when the winner rotated the session key it was about to save. Run one after the other, the second
    sees the first's outcome and gets allauth's own 4xx. The lock lives in the cache (Redis, shared by
    every worker, in production) so that it also holds across processes; it sits before
    SessionMiddleware in MIDDLEWARE so that it covers the session's save.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        session = self._session_id(request)
        if session is None:
            return self.get_response(request)
        lock = "signin-step:" + hashlib.sha256(session.encode()).hexdigest()
        deadline = time.monotonic() + STEP_WAIT_SECONDS
        while not cache.add(lock, 1, timeout=STEP_LOCK_SECONDS):
            if time.monotonic() > deadline:
                return _conflict(request, SESSION_BUSY)
            time.sleep(STEP_POLL_SECONDS)
        try:
            return self.get_response(request)
        finally:
            cache.delete(lock)

    @staticmethod
    def _session_id(request) -> str | None:
        if request.method in ("GET", "HEAD", "OPTIONS") or not request.path.startswith(SIGN_IN_PREFIXES):
            return None
        return request.headers.get("X-Session-Token") or request.COOKIES.get(settings.SESSION_COOKIE_NAME)


def _conflict(request, message: str) -> JsonResponse:
    if request.path.startswith(ALLAUTH_PREFIX):
        return JsonResponse({"status": 409, "errors": [{"message": message, "code": "conflict"}]}, status=409)
    return JsonResponse({"detail": message, "code": "conflict"}, status=409)
