"""Providers, their priced models, and provider keys with their one state machine.

Design:
- A `Provider` row is operator data (catalogue file or admin), never user input: its base URL is the
  only place an upstream URL comes from, checked by `keys.upstream.validate_base_url` on every save
  path (model `clean`, admin, loader).
- `ProviderModel` prices are integer nanodollars per 1M tokens, NULL when unknown. A model without
  both prices is not routable (`keys.selectors.provider_model_get_routable`): NULL rather than a
  missing row, so the catalogue can list a model before an admin prices it.
- `ProviderKey.secret_ciphertext` is Fernet ciphertext (keys.crypto); the plain secret never touches
  a model field, `__str__`, the admin or a log line. `fingerprint` is an HMAC of the secret keyed from
  SECRET_KEY (keys.crypto.secret_fingerprint), unique among rows that still hold a secret, so the
  same secret cannot be enrolled twice by anyone; removing a key scrubs both columns.
- Key states are declared once, as django-fsm-2 transitions on `ProviderKey` below. Only
  keys.services calls them (and writes the audit row); the gateway's hot-path pause/exhaust moves
  are conditional UPDATEs in keys.services whose source/target are read from these declarations.
- The row is locked by the gateway's least-recently-used pick, so nothing else writes it on the hot
  path: aggregate counters live in `ProviderKeyStats` (written by settlement), and requests in
  flight are `ProviderKeyLease` rows (written by pick, deleted by settlement). A counter on
  the key row would be locked by its own update just when a pick looks, and `SKIP LOCKED` would pass
  the key over: the least-recently-used order would stop being fair.
- Operator decisions are audited by PostgreSQL triggers (django-pghistory, core/audit.py): a provider's
  pool clearance, activity, exchange support and base URL, a model's prices. Neither table is written by
  the gateway. Key state changes keep their own domain trail, `ProviderKeyTransition` (owners see it; the
  hot path writes it when it pauses or exhausts a key), and no trigger sits on the hot `ProviderKey` row.
"""

import pghistory
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from core.audit import audit_trackers
from core.masking import masked_tail


@pghistory.track(
    *audit_trackers(), fields=["pool_clearance", "is_active", "exchange_supported", "base_url"],
    model_name="ProviderEvent", append_only=True,
)
class Provider(models.Model):
    class ApiStyle(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible"
        ANTHROPIC = "anthropic", "Anthropic native"
        GEMINI = "gemini", "Gemini native"

    class BalanceApi(models.TextChoices):
        NONE = "none", "None"
        DEEPSEEK = "deepseek", "DeepSeek /user/balance"
        OPENROUTER = "openrouter", "OpenRouter /key"
        MOONSHOT = "moonshot", "Moonshot /users/me/balance"
        SILICONFLOW = "siliconflow", "SiliconFlow /user/info"

    class CapField(models.TextChoices):
        MAX_TOKENS = "max_tokens", "max_tokens"
        MAX_COMPLETION_TOKENS = "max_completion_tokens", "max_completion_tokens"

    class PoolClearance(models.TextChoices):
        CLEARED = "cleared", "Cleared for the pool"
        PENDING = "pending", "Pending review"
        EXCLUDED = "excluded", "Excluded from the pool"

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    base_url = models.CharField(
        max_length=300, help_text="Operator-set only: https, and never a loopback/private/link-local address."
    )
    api_style = models.CharField(max_length=16, choices=ApiStyle.choices, default=ApiStyle.OPENAI)
    balance_api = models.CharField(max_length=16, choices=BalanceApi.choices, default=BalanceApi.NONE)
    balance_currency = models.CharField(
        max_length=3, default="USD", help_text="Currency of the balance reply when the reply does not name one."
    )
    pool_clearance = models.CharField(max_length=16, choices=PoolClearance.choices, default=PoolClearance.PENDING)
    exchange_supported = models.BooleanField(default=False)
    cap_field = models.CharField(
        max_length=24, choices=CapField.choices, default=CapField.MAX_TOKENS,
        help_text="The completion-cap field this provider reads: the gateway forwards the held cap in it "
        "and drops the other one.",
    )
    prices_provider = models.CharField(
        max_length=50, blank=True, help_text="Provider id in the genai-prices package; blank: admin prices only."
    )
    is_active = models.BooleanField(default=True)
    catalogue_managed = models.BooleanField(
        default=True,
        help_text="sync_providers keeps this row's URL and API fields in step with the catalogue file; "
        "untick to keep your own edits. Pool clearance and is_active are never overwritten.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(exchange_supported=False) | ~Q(balance_api="none"),
                name="provider_exchange_needs_balance_api",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from keys.upstream import validate_base_url

        super().clean()
        validate_base_url(self.base_url, field="base_url")

    @property
    def has_balance_api(self) -> bool:
        return self.balance_api != self.BalanceApi.NONE


@pghistory.track(
    *audit_trackers(), fields=["input_price", "output_price", "price_source", "is_active"],
    model_name="ProviderModelEvent", append_only=True,
)
class ProviderModel(models.Model):
    class PriceSource(models.TextChoices):
        PACKAGE = "package", "genai-prices package"
        OVERRIDE = "override", "Admin override"

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="models")
    name = models.CharField(max_length=200, help_text='The model id as the provider names it ("llama-3.1-8b-instant").')
    input_price = models.BigIntegerField(
        null=True, blank=True, help_text="Nanodollars per 1M input tokens; empty: not priced, not routable."
    )
    output_price = models.BigIntegerField(
        null=True, blank=True, help_text="Nanodollars per 1M output tokens; empty: not priced, not routable."
    )
    price_source = models.CharField(
        max_length=16,
        choices=PriceSource.choices,
        default=PriceSource.PACKAGE,
        help_text="An override is never touched by refresh_prices.",
    )
    max_output_tokens = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="The model's output limit in tokens; empty: HEADROOM_DEFAULT_MAX_TOKENS. Bounds the cap "
        "the gateway holds for and forwards.",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider__slug", "name"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "name"], name="provider_model_unique_name"),
            models.CheckConstraint(
                condition=(Q(input_price__isnull=True) | Q(input_price__gte=0))
                & (Q(output_price__isnull=True) | Q(output_price__gte=0)),
                name="provider_model_prices_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider.slug}/{self.name}"

    @property
    def is_priced(self) -> bool:
        return self.input_price is not None and self.output_price is not None


class ProviderKey(ConcurrentTransitionMixin, models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending verification"
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused (rate limited)"
        EXHAUSTED = "exhausted", "Exhausted"
        FAILED = "failed", "Failed verification"
        DISABLING = "disabling", "Disabling"
        INACTIVE = "inactive", "Inactive"

    # States from which an owner may deactivate or remove a key.
    LIVE_STATES = (Status.PENDING, Status.ACTIVE, Status.PAUSED, Status.EXHAUSTED, Status.FAILED)

    owner_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="provider_keys"
    )
    owner_org = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, null=True, blank=True, related_name="provider_keys"
    )
    is_platform = models.BooleanField(default=False, help_text="Owned by the platform: pay-as-you-go and fail-over.")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="keys")
    label = models.CharField(max_length=100, blank=True)

    secret_ciphertext = models.TextField(blank=True, editable=False)
    fingerprint = models.CharField(max_length=64, blank=True, editable=False)
    secret_last4 = models.CharField(max_length=4, blank=True, editable=False)

    status = FSMField(max_length=16, choices=Status.choices, default=Status.PENDING, protected=True)
    status_changed_at = models.DateTimeField(auto_now_add=True)

    byok = models.BooleanField(default=False, help_text="Serves its owner's own requests.")
    donate_to_pool = models.BooleanField(default=False, help_text="Serves other pool members (needs consent).")
    donated_at = models.DateTimeField(null=True, blank=True)
    exchange = models.BooleanField(default=False, help_text="Listed on the exchange for pay-as-you-go traffic.")
    exchange_listed_at = models.DateTimeField(null=True, blank=True)

    # The gateway's least-recently-used pick orders by (lru_seq, id); lru_seq comes from one sequence, so
    # it is strictly increasing across processes. Neither column is indexed: the pick rewrites them on
    # every request, and with no index to update that write is a HOT update of the row alone.
    last_used_at = models.DateTimeField(null=True, blank=True)
    lru_seq = models.BigIntegerField(default=0)

    consecutive_429s = models.PositiveIntegerField(default=0)
    failure_count = models.PositiveIntegerField(default=0, help_text="Consecutive failures; reset by a success.")
    retry_after_until = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=200, blank=True)

    verified_balance = models.BigIntegerField(null=True, blank=True, help_text="Nanodollars, from the balance API.")
    verified_at = models.DateTimeField(null=True, blank=True)
    removed_at = models.DateTimeField(null=True, blank=True, help_text="Removed by its owner: scrubbed once drained.")

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(is_platform=True, owner_user__isnull=True, owner_org__isnull=True)
                | Q(is_platform=False, owner_user__isnull=False, owner_org__isnull=True)
                | Q(is_platform=False, owner_user__isnull=True, owner_org__isnull=False),
                name="provider_key_exactly_one_owner",
            ),
            models.CheckConstraint(
                condition=Q(is_platform=False) | Q(byok=False, donate_to_pool=False, exchange=False),
                name="provider_key_platform_has_no_member_flags",
            ),
            models.CheckConstraint(
                condition=Q(secret_ciphertext="", fingerprint="") | (~Q(secret_ciphertext="") & ~Q(fingerprint="")),
                name="provider_key_secret_and_fingerprint_together",
            ),
            models.UniqueConstraint(
                fields=["fingerprint"], condition=~Q(secret_ciphertext=""), name="provider_key_unique_live_secret"
            ),
        ]
        indexes = [
            # The candidates of a route: a provider's keys in one status (ordered by the pick itself).
            models.Index(fields=["provider", "status"], name="provider_key_provider_status"),
            models.Index(fields=["status", "status_changed_at"], name="provider_key_status_age"),
        ]

    def __str__(self) -> str:
        # Never the secret: the label, provider and masked tail only.
        return f"{self.label or 'key'} {self.masked}"

    @property
    def masked(self) -> str:
        # Kept after a removal scrubs the secret: the owner can still tell which key a history belongs to.
        return masked_tail(self.secret_last4)

    @property
    def owner(self):
        return self.owner_user or self.owner_org

    @property
    def has_secret(self) -> bool:
        return bool(self.secret_ciphertext)

    # --- the state machine: every legal move, and nothing else -----------------------------------
    # Conditions stay out of the declarations on purpose: the services check the business rules and
    # say why they refuse, the machine only knows which moves exist.

    @transition(field=status, source=Status.PENDING, target=Status.ACTIVE)
    def activate(self) -> None:
        """Verification succeeded."""

    @transition(field=status, source=Status.PENDING, target=Status.FAILED)
    def fail(self) -> None:
        """Verification found the key invalid or unsupported."""

    @transition(field=status, source=Status.ACTIVE, target=Status.PAUSED)
    def pause(self) -> None:
        """N consecutive upstream 429s (on the request path)."""

    @transition(field=status, source=Status.PAUSED, target=Status.ACTIVE)
    def resume(self) -> None:
        """The owner reactivates, or a probe after Retry-After succeeds."""

    @transition(field=status, source=Status.ACTIVE, target=Status.EXHAUSTED)
    def exhaust(self) -> None:
        """Too many failures, or an exchange balance below the minimum."""

    @transition(field=status, source=[Status.EXHAUSTED, Status.FAILED], target=Status.PENDING)
    def revalidate(self) -> None:
        """The owner asks for a new verification."""

    @transition(field=status, source=list(LIVE_STATES), target=Status.DISABLING)
    def disable(self) -> None:
        """Deactivated or removed: no new work, in-flight requests finish."""

    @transition(field=status, source=Status.DISABLING, target=Status.INACTIVE)
    def retire(self) -> None:
        """No request is in flight any more."""

    activate.alters_data = fail.alters_data = pause.alters_data = resume.alters_data = True
    exhaust.alters_data = revalidate.alters_data = disable.alters_data = retire.alters_data = True


class ProviderKeyStats(models.Model):
    """Aggregate counters per key (what donors see), off the hot, row-locked ProviderKey row."""

    key = models.OneToOneField(ProviderKey, on_delete=models.CASCADE, primary_key=True, related_name="stats")
    requests_served = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    credits_earned = models.BigIntegerField(default=0, help_text="Nanodollars credited to the owner.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "provider key stats"

    def __str__(self) -> str:
        return f"stats of key {self.key_id}"


class ProviderKeyLease(models.Model):
    """A request using a key right now: the gateway's pick writes one, the request's settlement (or
    its fail-over to another key) deletes it. DISABLING waits until a key has none
    (keys.services.provider_key_drain).

    Rows rather than a counter on a per-key row: every pick and every settlement of a key would have
    to update that one row, and a pick waiting on it while a settlement commits loses the key's turn
    (the benchmark also measured the counter at a fifth of the database's work per request).
    """

    # Not checked by the database (Django still applies CASCADE): every pick inserts a lease, and the
    # check cost it a share lock on the key's row, which the pick has just updated.
    key = models.ForeignKey(ProviderKey, on_delete=models.CASCADE, related_name="leases", db_constraint=False)
    request_id = models.CharField(max_length=64)  # indexed below (no pattern index: no LIKE query)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["request_id"], name="provider_key_lease_request")]

    def __str__(self) -> str:
        return f"key {self.key_id} serving {self.request_id}"


class PoolConsent(models.Model):
    """A member's one-time agreement to the pool terms (per consent text version)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="pool_consents")
    consent_version = models.CharField(max_length=32)
    accepted_at = models.DateTimeField(auto_now_add=True)
    key = models.ForeignKey(
        ProviderKey,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The key being donated when consent was given.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "consent_version"], name="pool_consent_once_per_version"),
        ]

    def __str__(self) -> str:
        return f"{self.user} accepted pool terms {self.consent_version}"


class ProviderKeyTransition(models.Model):
    """Audit trail: every state change and flag change of a key, with who and why."""

    key = models.ForeignKey(ProviderKey, on_delete=models.CASCADE, related_name="transitions")
    from_status = models.CharField(max_length=16, choices=ProviderKey.Status.choices)
    to_status = models.CharField(max_length=16, choices=ProviderKey.Status.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reason = models.CharField(max_length=200, blank=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"key {self.key_id}: {self.from_status} → {self.to_status}"
