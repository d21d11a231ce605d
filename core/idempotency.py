"""`Idempotency-Key` for POSTs that move money: a retry replays the first response.

The record is inserted first, in the same database transaction as the work it guards. A concurrent
request with the same key blocks on the unique index until the first commits, then finds the record
and replays it; if the first rolls back, nothing was remembered and nothing moved. Once the endpoint
has run, its answer is kept whatever it was (a refusal too, as payment APIs do); requests that fail
validation never reach it and are not remembered.

"The same request" is judged on the validated request, not on its bytes: `"amount": "0.10"` and
`"amount": 0.1` parse to the same nanodollars and are the same request. A key is remembered for
HEADROOM_IDEMPOTENCY_KEY_TTL seconds; after that it is forgotten (a cleanup task deletes old records,
and an expired one is never replayed) and may be used for a new request.
"""

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from core.errors import ServiceError
from core.exceptions import ApiError, service_error_response
from core.models import IdempotencyRecord

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENCY_KEY_MAX_LENGTH = 255
IDEMPOTENCY_KEY_INVALID = "The Idempotency-Key header must be 1 to 255 visible ASCII characters."
IDEMPOTENCY_KEY_REUSED = (
    "This Idempotency-Key was already used with a different request. Send a new key for a new request."
)


def _valid_key(key: str) -> bool:
    return 0 < len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH and all(33 <= ord(c) <= 126 for c in key)


def _request_hash(request: Request, payload: dict) -> str:
    body = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


def idempotency_cutoff() -> datetime:
    """Records created before this are expired."""
    return timezone.now() - timedelta(seconds=settings.HEADROOM_IDEMPOTENCY_KEY_TTL)


def idempotency_records_delete_expired() -> int:
    """Forget every expired Idempotency-Key; returns how many records went."""
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=idempotency_cutoff()).delete()
    return deleted


def idempotent_response(request: Request, *, payload: dict, handler: Callable[[], Response]) -> Response:
    """Run `handler` at most once per (user, Idempotency-Key) and validated `payload`; without the
    header, just run it. A ServiceError from `handler` is answered (and remembered) as a refusal."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return handler()
    if not _valid_key(key):
        raise ApiError(IDEMPOTENCY_KEY_INVALID, code="idempotency_key_invalid")
    digest = _request_hash(request, payload)
    with transaction.atomic():
        # An expired record is forgotten here too, not only by the cleanup task: it is never replayed.
        IdempotencyRecord.objects.filter(user=request.user, key=key, created_at__lt=idempotency_cutoff()).delete()
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(user=request.user, key=key, request_hash=digest)
        except IntegrityError:
            record = IdempotencyRecord.objects.get(user=request.user, key=key)
            if record.request_hash != digest:
                raise ApiError(
                    IDEMPOTENCY_KEY_REUSED, code="idempotency_key_reused", status_code=status.HTTP_422_UNPROCESSABLE_ENTITY
                ) from None
            return Response(
                record.response_body, status=record.response_status, headers={IDEMPOTENCY_REPLAYED_HEADER: "true"}
            )
        try:
            response = handler()
        except ServiceError as error:
            response = service_error_response(error)
        # Stored as rendered, so a replay's body is byte-for-byte the first one's.
        record.response_status = response.status_code
        record.response_body = json.loads(JSONRenderer().render(response.data) or b"null")
        record.save(update_fields=["response_status", "response_body"])
        return response
