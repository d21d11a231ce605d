"""The double-entry ledger.

Design (after django-hordak): every movement of money is a `LedgerTransaction`
with two or more `LedgerEntry` legs whose signed amounts sum to zero. A
positive amount raises the account's balance. Accounts belong to a billing
owner (a user or an organization: `main` and `frozen`) or to the platform
(revenue, signup credits, pool rewards, …). Platform source accounts go
negative by design: the sum of *all* balances is always zero.

- Amounts are integer nanodollars (core.money).
- Entries are append-only: a correction is a new transaction.
- `Account.balance` is a cache of the sum of its entries, updated with F() in
  the same database transaction as the entries (billing.services.ledger).
- Each transaction has a unique idempotency key, so a retry never moves money
  twice.
- The zero sum is checked in the service and, on PostgreSQL, by a deferred
  constraint trigger (migration 0002); `manage.py ledger_check` re-verifies
  every invariant from the entries.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q


class Account(models.Model):
    class Kind(models.TextChoices):
        # Billing owners' accounts.
        MAIN = "main", "Main balance"
        FROZEN = "frozen", "Frozen balance"
        # Platform accounts.
        REVENUE = "revenue", "Platform revenue"
        SIGNUP_CREDITS = "signup_credits", "Signup credits"
        POOL_REWARDS = "pool_rewards", "Pool rewards"
        EXCHANGE_PAYOUTS = "exchange_payouts", "Exchange payouts"
        WITHDRAWALS_PAYABLE = "withdrawals_payable", "Withdrawals payable"
        PROVIDER_FEES = "provider_fees", "Provider costs"
        ADJUSTMENTS = "adjustments", "Manual adjustments"
        TOP_UPS = "top_ups", "Top-ups received"

    OWNER_KINDS = (Kind.MAIN, Kind.FROZEN)

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="ledger_accounts"
    )
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, null=True, blank=True, related_name="ledger_accounts"
    )
    kind = models.CharField(max_length=32, choices=Kind.choices)
    balance = models.BigIntegerField(default=0, help_text="Nanodollars; the sum of this account's entries.")
    held = models.BigIntegerField(
        default=0, help_text="Nanodollars reserved by requests in flight: the sum of its open holds."
    )
    may_go_negative = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(may_go_negative=True) | Q(balance__gte=0), name="account_balance_not_below_floor"
            ),
            models.CheckConstraint(condition=Q(held__gte=0), name="account_held_not_negative"),
            models.CheckConstraint(
                condition=(
                    Q(user__isnull=False, organization__isnull=True, kind__in=["main", "frozen"])
                    | Q(user__isnull=True, organization__isnull=False, kind__in=["main", "frozen"])
                    | (Q(user__isnull=True, organization__isnull=True) & ~Q(kind__in=["main", "frozen"]))
                ),
                name="account_owner_matches_kind",
            ),
            models.CheckConstraint(
                condition=Q(may_go_negative=False) | Q(user__isnull=True, organization__isnull=True),
                name="account_only_platform_may_go_negative",
            ),
            models.UniqueConstraint(fields=["user", "kind"], condition=Q(user__isnull=False), name="account_unique_user_kind"),
            models.UniqueConstraint(
                fields=["organization", "kind"], condition=Q(organization__isnull=False), name="account_unique_org_kind"
            ),
            models.UniqueConstraint(
                fields=["kind"],
                condition=Q(user__isnull=True, organization__isnull=True),
                name="account_unique_platform_kind",
            ),
        ]

    def __str__(self) -> str:
        owner = self.user or self.organization or "platform"
        return f"{owner}: {self.get_kind_display()}"


class LedgerTransaction(models.Model):
    class Kind(models.TextChoices):
        SIGNUP_CREDIT = "signup_credit", "Signup credit"
        TRANSFER = "transfer", "Transfer"
        ADJUSTMENT = "adjustment", "Adjustment"
        USAGE = "usage", "Usage settlement"
        POOL_REWARD = "pool_reward", "Pool reward"
        EXCHANGE_EARNING = "exchange_earning", "Exchange earning"
        BYOK_FEE = "byok_fee", "BYOK fee"
        CONVERSION = "conversion", "Frozen to main conversion"
        WITHDRAWAL_HOLD = "withdrawal_hold", "Withdrawal hold"
        WITHDRAWAL_RETURN = "withdrawal_return", "Withdrawal returned"
        WITHDRAWAL_PAID = "withdrawal_paid", "Withdrawal paid"

    # Unique by the constraint below: a field-level unique would add a pattern-matching index on
    # PostgreSQL that no query uses, and every request's settlement inserts here.
    idempotency_key = models.CharField(max_length=200)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    memo = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["idempotency_key"], name="ledger_transaction_unique_key")]

    def __str__(self) -> str:
        return f"{self.kind} {self.idempotency_key}"


class LedgerEntry(models.Model):
    transaction = models.ForeignKey(LedgerTransaction, on_delete=models.PROTECT, related_name="entries")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries")
    amount = models.BigIntegerField(help_text="Signed nanodollars: positive raises the account's balance.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "ledger entries"
        constraints = [models.CheckConstraint(condition=~Q(amount=0), name="ledger_entry_amount_not_zero")]

    def __str__(self) -> str:
        return f"{self.account}: {self.amount}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not self._state.adding:
            raise ValueError("Ledger entries are append-only: post a correcting transaction instead.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Ledger entries are append-only: post a correcting transaction instead.")


class BalanceHold(models.Model):
    """Money reserved for a request in flight: spendable = balance − held.

    Not a ledger movement: the request's settlement posts the real cost and
    deletes the hold in the same database transaction, so a row exists only
    while its request is in flight. `Account.held` caches the sum of an
    account's holds so that placing one is a single conditional UPDATE
    (pool.hotpath). A hold left by a crashed process is released by
    `billing.tasks.stale_holds_release_task`.

    Released holds are deleted rather than marked: marked rows would stay in
    every index of this table, and an index of open holds keeps an entry for
    each released one until VACUUM, which the gateway's release then reads.
    """

    # Not checked by the database (Django still applies PROTECT): each request inserts a hold, and the
    # check cost it a share lock on the payer's row, which the request's own hold has just updated.
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="holds", db_constraint=False)
    request_id = models.CharField(max_length=64)  # unique: the constraint below (no pattern index)
    # The API key whose monthly spend limit this hold counts against: set only when the key has a
    # limit (billing_hold_take), so that requests in flight count against it; indexed only then.
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False,
        related_name="+",
    )
    amount = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="balance_hold_amount_positive"),
            models.UniqueConstraint(fields=["request_id"], name="balance_hold_unique_request"),
        ]
        indexes = [
            models.Index(fields=["api_key"], condition=Q(api_key__isnull=False), name="balance_hold_limited_key"),
        ]

    def __str__(self) -> str:
        return f"hold {self.request_id}: {self.amount}"


class ApiKeyMonthlySpend(models.Model):
    """What an API key's requests were charged in a calendar month (UTC), fee included: the monthly
    spend limit's counter, kept only for keys with a limit.

    The gateway's settlement adds to it (billing_api_key_spend_add, with the request record, in the
    same transaction), so checking a limit reads one row rather than summing the month's requests.
    """

    # The unique (api_key, month) index serves every lookup: no index of its own.
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.CASCADE, related_name="+", db_index=False)
    month = models.DateField(help_text="The first day of the month, UTC.")
    charged = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "month"], name="api_key_spend_key_month"),
            models.CheckConstraint(condition=Q(charged__gte=0), name="api_key_spend_not_negative"),
        ]

    def __str__(self) -> str:
        return f"API key {self.api_key_id} {self.month:%Y-%m}: {self.charged}"


class ByokMonthlyUsage(models.Model):
    """BYOK requests per billing owner per calendar month (UTC): the free tier's counter."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    month = models.DateField(help_text="The first day of the month, UTC.")
    requests = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, organization__isnull=True)
                | Q(user__isnull=True, organization__isnull=False),
                name="byok_usage_one_owner",
            ),
            models.UniqueConstraint(fields=["user", "month"], condition=Q(user__isnull=False), name="byok_usage_user_month"),
            models.UniqueConstraint(
                fields=["organization", "month"], condition=Q(organization__isnull=False), name="byok_usage_org_month"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user or self.organization} {self.month:%Y-%m}: {self.requests}"
