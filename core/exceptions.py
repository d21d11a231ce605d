"""The one error shape of the management API (/api/v1/...).

Every refusal is `{"detail": <message for people>, "code": <stable code for programs>}`; a request
that fails validation also names its fields: `"fields": {<field>: [<message>, ...]}`, and its
`detail` repeats the first one as "<field>: <message>". DRF's own errors (401, 403, 404, 405, parse
errors, throttling) keep their status and get their DRF code.

Views raise `ApiError`; services raise `core.errors.ServiceError` subclasses (ValueErrors, no DRF in
them, so pages can show the same message), which this handler answers exactly as an `ApiError`.
"""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from django.utils.encoding import force_str
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from core.errors import ServiceError

VALIDATION_CODE = "invalid"
VALIDATION_DETAIL = "Invalid input."
NON_FIELD_KEYS = ("non_field_errors", "detail")


class ApiError(exceptions.APIException):
    """A refusal from a management endpoint: a message safe to show, a stable code, an HTTP status."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid"

    def __init__(self, detail: str, *, code: str = "invalid", status_code: int = status.HTTP_400_BAD_REQUEST):
        super().__init__(detail, code)
        self.status_code = status_code


def service_error_response(error: ServiceError) -> Response:
    """The answer to a refused service call, for code that catches it rather than letting it reach
    the handler (core.idempotency remembers refusals)."""
    return Response({"detail": str(error), "code": error.code}, status=error.status_code)


def _first_message(errors) -> str:
    while isinstance(errors, dict | list) and errors:
        errors = next(iter(errors.values())) if isinstance(errors, dict) else errors[0]
    return force_str(errors) if errors else ""


def _messages(errors, where: str = "") -> list[str]:
    """A field's messages as a flat list: a list or nested field's item errors (`{"0": [...]}`) become
    "item 0: <message>", so every field maps to strings, as the schema says."""
    if isinstance(errors, dict):
        return [m for key, value in errors.items() for m in _messages(value, f"{where}item {key}: ")]
    if isinstance(errors, list):
        return [m for value in errors for m in _messages(value, where)]
    return [where + force_str(errors)]


def _validation_body(error: exceptions.ValidationError) -> dict:
    detail = error.detail
    if not isinstance(detail, dict):
        return {"detail": _first_message(detail), "code": VALIDATION_CODE}
    fields = {key: _messages(value) for key, value in detail.items() if key not in NON_FIELD_KEYS}
    general = [detail[key] for key in NON_FIELD_KEYS if key in detail]
    if general or not fields:
        message = _first_message(general) or VALIDATION_DETAIL
    else:
        name = next(iter(fields))
        message = f"{name}: {fields[name][0] if fields[name] else ''}"
    body = {"detail": message, "code": VALIDATION_CODE}
    if fields:
        body["fields"] = fields
    return body


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    """REST_FRAMEWORK's EXCEPTION_HANDLER: DRF's handling (status, auth headers), our body."""
    if isinstance(exc, ServiceError):
        exc = ApiError(str(exc), code=exc.code, status_code=exc.status_code)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None  # not an API error: a 500, reported as any other
    if isinstance(exc, exceptions.ValidationError):
        response.data = _validation_body(exc)
    else:
        codes = exc.get_codes()
        response.data = {"detail": _first_message(exc.detail), "code": codes if isinstance(codes, str) else "error"}
    return response
