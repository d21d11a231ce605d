"""Payout-rate rules and exchange earnings.

Design:
- A `PayoutRateRule` is a percentage of a request's settled cost, scoped by
  which of (user, provider, task) it names. Six scopes exist — global,
  provider, provider+task, user, user+provider, user+provider+task — and
  database constraints allow one rule per scope and no other combination (a
  task always comes with a provider). exchange.selectors resolves them, most
  specific first.
- A rule of 0% means "disabled" for its scope; a global rule of 0% switches
  the exchange off altogether, whatever more specific rules say.
- An `ExchangeEarning` records what one successful request earned its key's
  owner: the settled cost, what was collected from the payer (the cost capped
  at their balance), the rate resolved at the time (percent, rule and scope,
  copied, never referenced), the amount — the rate of what was *collected*,
  never of the notional cost (SPEC "Served ≤ collected") — and the ledger
  transaction. It is written once per request, by the settlement
  (exchange_earnings_insert, exchange/sql/); later rule changes never rewrite it.
"""

from decimal import Decimal

import pghistory
from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q

from core.audit import audit_trackers

RULE_DUPLICATE_SCOPE = "There is already a rule for this scope: edit that rule instead."
RULE_TASK_NEEDS_PROVIDER = "A task-specific rule needs a provider."


class Task(models.TextChoices):
    """The request kinds a rule may be scoped to."""

    CHAT = "chat", "Chat completions"
    EMBEDDINGS = "embeddings", "Embeddings"


# Every rule change, the global rate (the exchange's on/off switch) included, is audited by a trigger.
@pghistory.track(
    *audit_trackers(), fields=["user", "provider", "task", "percent", "note"],
    model_name="PayoutRateRuleEvent", append_only=True,
)
class PayoutRateRule(models.Model):
    class Scope(models.TextChoices):
        # Most specific first: the resolver's order.
        USER_PROVIDER_TASK = "user+provider+task", "User + provider + task"
        USER_PROVIDER = "user+provider", "User + provider"
        USER = "user", "User default"
        PROVIDER_TASK = "provider+task", "Provider + task"
        PROVIDER = "provider", "Provider"
        GLOBAL = "global", "Global default"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="payout_rate_rules"
    )
    provider = models.ForeignKey(
        "keys.Provider", on_delete=models.CASCADE, null=True, blank=True, related_name="payout_rate_rules"
    )
    task = models.CharField(
        max_length=32, choices=Task.choices, blank=True, help_text="Only together with a provider."
    )
    percent = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("100"))],
        help_text="Percent of the settled cost paid to the key's owner; 0 disables the exchange for this scope.",
    )
    note = models.CharField(max_length=200, blank=True, help_text="Why this rule exists (for operators).")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(percent__gte=0) & Q(percent__lte=100), name="payout_rate_percent_0_to_100"
            ),
            models.CheckConstraint(
                condition=Q(task="") | Q(provider__isnull=False),
                name="payout_rate_task_needs_provider",
                violation_error_message=RULE_TASK_NEEDS_PROVIDER,
            ),
            # One rule per scope. NULLs are distinct in unique indexes, so each
            # scope family gets a partial index over the columns it does set.
            models.UniqueConstraint(
                fields=["user", "provider", "task"],
                condition=Q(user__isnull=False, provider__isnull=False),
                name="payout_rate_unique_user_provider_task",
                violation_error_message=RULE_DUPLICATE_SCOPE,
            ),
            models.UniqueConstraint(
                fields=["user"],
                condition=Q(user__isnull=False, provider__isnull=True),
                name="payout_rate_unique_user",
                violation_error_message=RULE_DUPLICATE_SCOPE,
            ),
            models.UniqueConstraint(
                fields=["provider", "task"],
                condition=Q(user__isnull=True, provider__isnull=False),
                name="payout_rate_unique_provider_task",
                violation_error_message=RULE_DUPLICATE_SCOPE,
            ),
            models.UniqueConstraint(
                fields=["task"],
                condition=Q(user__isnull=True, provider__isnull=True),
                name="payout_rate_unique_global",
                violation_error_message=RULE_DUPLICATE_SCOPE,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.scope_label}: {self.percent}%"

    @property
    def scope(self) -> str:
        return rule_scope(user_id=self.user_id, provider_id=self.provider_id, task=self.task)

    @property
    def scope_label(self) -> str:
        parts = []
        if self.user_id:
            parts.append(f"user {self.user}")
        if self.provider_id:
            parts.append(f"provider {self.provider.slug}")
        if self.task:
            parts.append(f"task {self.task}")
        return " + ".join(parts) or "global"


def rule_scope(*, user_id: int | None, provider_id: int | None, task: str) -> str:
    """Which of the six scopes a (user, provider, task) combination names."""
    Scope = PayoutRateRule.Scope
    if user_id:
        if provider_id:
            return Scope.USER_PROVIDER_TASK if task else Scope.USER_PROVIDER
        return Scope.USER
    if provider_id:
        return Scope.PROVIDER_TASK if task else Scope.PROVIDER
    return Scope.GLOBAL


class GlobalPayoutRate(PayoutRateRule):
    """The global rule, given its own page in the admin (a proxy: no table of its own)."""

    class Meta:
        proxy = True
        verbose_name = "global payout rate"
        verbose_name_plural = "global payout rate"


class ExchangeEarning(models.Model):
    """What one successful request on an exchange key earned its owner, snapshotted."""

    provider_key = models.ForeignKey("keys.ProviderKey", on_delete=models.PROTECT, related_name="exchange_earnings")
    account = models.ForeignKey(
        "billing.Account", on_delete=models.PROTECT, related_name="exchange_earnings", help_text="The frozen account."
    )
    request_id = models.CharField(max_length=100, unique=True)
    settled_cost = models.BigIntegerField(help_text="Nanodollars: the request's settled cost.")
    collected = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Nanodollars actually charged to the payer (the settled cost capped at their balance); the"
        " amount is the rate of this. Empty on rows recorded before it was kept.",
    )
    rate_percent = models.DecimalField(max_digits=5, decimal_places=2)
    rate_rule_id = models.BigIntegerField(null=True, blank=True, help_text="The rule resolved then (a copy).")
    rate_scope = models.CharField(max_length=32)
    amount = models.BigIntegerField(help_text="Nanodollars credited to frozen balance (0 at a 0% rate).")
    ledger_transaction = models.OneToOneField(
        "billing.LedgerTransaction",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="exchange_earning",
        help_text="Empty when nothing was earned.",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(amount__gte=0) & Q(settled_cost__gte=0), name="exchange_earning_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(collected__isnull=True) | Q(collected__gte=0, collected__lte=F("settled_cost")),
                name="exchange_earning_collected_within_cost",
            ),
            models.CheckConstraint(
                condition=Q(amount=0, ledger_transaction__isnull=True)
                | Q(amount__gt=0, ledger_transaction__isnull=False),
                name="exchange_earning_amount_matches_ledger",
            ),
        ]
        indexes = [models.Index(fields=["account", "provider_key"], name="exchange_earning_owner_key")]

    def __str__(self) -> str:
        return f"Earning for request {self.request_id}"
