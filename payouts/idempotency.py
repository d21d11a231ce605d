"""`Idempotency-Key` for money-moving POSTs: a retry replays the first response.

The record is inserted first, in the same database transaction as the work it
guards. A concurrent request with the same key blocks on the unique index until
the first commits, then finds the record and replays it; if the first rolls
back, nothing was remembered and nothing moved. Once the endpoint has run, its
answer is kept whatever it was (a refusal too, as payment APIs do): requests
that fail validation before running are not remembered.
"""

import hashlib
import json
from collections.abc import Callable

from django.db import IntegrityError, transaction
from rest_framework import status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from payouts.models import IdempotencyRecord

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENCY_KEY_MAX_LENGTH = 255
IDEMPOTENCY_KEY_INVALID = "The Idempotency-Key header must be 1 to 255 visible ASCII characters."
IDEMPOTENCY_KEY_REUSED = (
    "This Idempotency-Key was already used with a different request. Send a new key for a new request."
)


def _valid_key(key: str) -> bool:
    return 0 < len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH and all(33 <= ord(c) <= 126 for c in key)


def _request_hash(request: Request) -> str:
    body = json.dumps(request.data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


def idempotent_response(request: Request, handler: Callable[[], Response]) -> Response:
    """Run `handler` at most once per (user, Idempotency-Key); without the header, just run it."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return handler()
    if not _valid_key(key):
        return Response({"detail": IDEMPOTENCY_KEY_INVALID}, status=status.HTTP_400_BAD_REQUEST)
    digest = _request_hash(request)
    with transaction.atomic():
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(user=request.user, key=key, request_hash=digest)
        except IntegrityError:
            record = IdempotencyRecord.objects.get(user=request.user, key=key)
            if record.request_hash != digest:
                return Response({"detail": IDEMPOTENCY_KEY_REUSED}, status=status.HTTP_422_UNPROCESSABLE_ENTITY)
            return Response(
                record.response_body, status=record.response_status, headers={IDEMPOTENCY_REPLAYED_HEADER: "true"}
            )
        response = handler()
        # Stored as rendered, so a replay's body is byte-for-byte the first one's.
        record.response_status = response.status_code
        record.response_body = json.loads(JSONRenderer().render(response.data) or b"null")
        record.save(update_fields=["response_status", "response_body"])
        return response
