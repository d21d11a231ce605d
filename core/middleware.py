"""Hostile input that Django, DRF and allauth would answer with a 500, answered with a clear 400.

Every management and sign-in endpoint parses JSON with the standard library, which gives up on deep
nesting (`[[[[…` 100,000 deep) with a RecursionError rather than a ValueError, so no parser turns it
into a 400; and a NUL character in a query parameter reaches PostgreSQL, which refuses it with an
error the view does not expect. Caught here once, for every endpoint present and future. (`/v1` is
not served through Django's middleware: the gateway parses with orjson, which refuses nesting past
1,024 levels as malformed JSON.)
"""

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
