"""Rows that belong to no domain: today, the Idempotency-Key store of the management API."""

from django.conf import settings
from django.db import models


class IdempotencyRecord(models.Model):
    """The first response to a POST carrying an `Idempotency-Key` (core.idempotency).

    Keyed per user; the request hash covers method, path and the validated request, so the same key
    sent with another request is recognised and refused. Kept HEADROOM_IDEMPOTENCY_KEY_TTL seconds.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField(null=True)
    response_body = models.JSONField(null=True)
    # Indexed: the cleanup task deletes by age.
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="core_idempotency_unique_user_key")]

    def __str__(self) -> str:
        return f"Idempotency record {self.pk}"
