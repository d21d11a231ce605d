"""The record of each gateway request: what was routed where and what it cost.

Never a prompt, a completion or the requester's IP: only routing, token counts,
money and timings. Written once, at settlement; its unique `request_id` is what
makes settlement happen exactly once.
"""

from django.conf import settings
from django.db import models


class RequestRecord(models.Model):
    class Route(models.TextChoices):
        POOL = "pool", "Shared pool"
        BYOK = "byok", "Own key (BYOK)"
        PLATFORM = "platform", "Platform key"
        EXCHANGE = "exchange", "Exchange key"

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed before the first byte"
        CUT = "cut", "Upstream stream cut"
        CANCELLED = "cancelled", "Client disconnected"

    request_id = models.CharField(max_length=64)  # unique: the constraint below (no pattern index)
    # The references below are not checked by the database (`db_constraint=False`; Django still applies
    # on_delete): every settlement inserts a record, and each checked reference cost it a lookup and a
    # share lock on a row that every request of its caller shares (the user, the API key, the
    # provider, the key). The gateway writes them from rows it read in the same request, and none of
    # those rows is ever deleted while records point at it (PROTECT, or keys that are scrubbed, not
    # deleted).
    # Every query on the time leads with who or which key (the composite indexes below); a further
    # index per column would only cost each settlement an insert, and this table takes one per request.
    created_at = models.DateTimeField()
    settled_at = models.DateTimeField(auto_now_add=True)

    api_key = models.ForeignKey(
        "accounts.ApiKey", on_delete=models.SET_NULL, null=True, related_name="+", db_index=False,
        db_constraint=False,
    )  # indexed with created_at below
    requester = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="gateway_requests", db_index=False,
        db_constraint=False,
    )  # indexed with created_at below
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, null=True, blank=True, related_name="+",
        db_constraint=False, help_text="The billing owner when the request was made with an organization's key.",
    )
    route = models.CharField(max_length=16, choices=Route.choices)
    task = models.CharField(max_length=16, default="chat")
    provider = models.ForeignKey(
        "keys.Provider", on_delete=models.PROTECT, related_name="+", db_index=False, db_constraint=False
    )  # indexed with route below
    model = models.CharField(max_length=200)
    provider_key = models.ForeignKey(
        "keys.ProviderKey", on_delete=models.SET_NULL, null=True, related_name="+", db_constraint=False
    )
    stream = models.BooleanField(default=False)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    upstream_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)

    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(default=False, help_text="The provider sent no usage: tokens were counted.")

    # Money, in nanodollars, with the prices and rate it was computed from.
    input_price = models.BigIntegerField(help_text="Nanodollars per 1M input tokens at the time.")
    output_price = models.BigIntegerField(help_text="Nanodollars per 1M output tokens at the time.")
    cost = models.BigIntegerField(default=0, help_text="Notional cost: tokens × price.")
    charged = models.BigIntegerField(default=0, help_text="Taken from the requester's balance (cost or BYOK fee).")
    fee = models.BigIntegerField(default=0, help_text="BYOK fee part of `charged`.")
    reward = models.BigIntegerField(default=0, help_text="Credited to the key's owner (pool reward or exchange earning).")
    payout_rate = models.DecimalField(max_digits=5, decimal_places=2, null=True, blank=True)

    latency_ms = models.PositiveIntegerField(default=0)
    ttfb_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["request_id"], name="request_record_unique_request")]
        indexes = [
            models.Index(fields=["requester", "-created_at"], name="request_requester_recent"),
            models.Index(fields=["api_key", "created_at"], name="request_api_key_month"),
            models.Index(fields=["provider", "route"], name="request_provider_route"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.route} {self.outcome}"
