"""Frozen balance out: conversions to main balance and crypto withdrawals.

Design:
- Exchange earnings land in the key owner's `frozen` ledger account (exchange
  app): a member's, or an organization's for keys an organization owns.
  Money leaves it only through this app, and only through the ledger
  (billing.services): a conversion moves frozen → main at once; a withdrawal
  request moves frozen → the platform's `withdrawals_payable` account at once
  (the hold), and an admin later either marks it paid (payable → the platform's
  `exchange_payouts` account: the money has left the platform) or rejects it
  (payable → the member's frozen account again).
- A withdrawal's state is a django-fsm-2 state machine (`PENDING → PAID |
  REJECTED`), protected so nothing but a transition changes it, and guarded by
  ConcurrentTransitionMixin on top of the row lock its services take, so a paid
  and a reject racing end in exactly one final state. Every transition writes a
  `WithdrawalEvent` (from, to, actor, at, note).
- Each ledger posting carries an idempotency key derived from the row
  (`withdrawal-hold:<id>`, …), so no step can move money twice.
- The billing owner is the member (`organization` empty) or the organization
  (`organization` set); `user` is always the member who asked — for an
  organization, one of its owners (payouts.services checks the role).
- Money-moving POSTs honour an `Idempotency-Key` header (core.idempotency), so
  a client retry replays the first response.
"""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django_fsm import ConcurrentTransitionMixin, FSMField, transition


class WithdrawalNetwork(models.Model):
    """A crypto network operators pay out on, with the address format it takes."""

    class AddressFormat(models.TextChoices):
        TRON = "tron", "TRON (base58, T…)"
        EVM = "evm", "EVM (0x + 40 hex)"
        SOLANA = "solana", "Solana (base58, 32–44 characters)"
        BITCOIN = "bitcoin", "Bitcoin (bech32 bc1… or base58 1…/3…)"

    code = models.CharField(
        max_length=32, unique=True, help_text="What members send as `network`, e.g. USDT-TRC20."
    )
    name = models.CharField(max_length=100)
    address_format = models.CharField(max_length=16, choices=AddressFormat.choices)
    is_active = models.BooleanField(default=True, help_text="Inactive networks take no new withdrawal requests.")
    position = models.PositiveSmallIntegerField(default=0, help_text="Order in lists, lowest first.")

    class Meta:
        ordering = ["position", "code"]

    def __str__(self) -> str:
        return self.code


class BillingOwned(models.Model):
    """Whose balance a payout row moved (`billing_owner`) and which member asked (`user`)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="%(class)ss",
        help_text="The member who asked.",
    )
    organization = models.ForeignKey(
        "accounts.Organization",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="%(class)ss",
        help_text="The organization whose balance moved; empty for the member's own.",
    )

    class Meta:
        abstract = True

    @property
    def billing_owner(self):
        return self.organization if self.organization_id else self.user


class Conversion(BillingOwned):
    """Frozen balance moved to main balance, once, by its owner (a member, or an organization's owner)."""

    reference = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    amount = models.BigIntegerField(help_text="Nanodollars.")
    ledger_transaction = models.OneToOneField(
        "billing.LedgerTransaction", on_delete=models.PROTECT, related_name="conversion"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="conversion_amount_positive")]

    def __str__(self) -> str:
        return f"Conversion {self.pk} by {self.user}"


class Withdrawal(ConcurrentTransitionMixin, BillingOwned):
    """A request to be paid part of a frozen balance (a member's or an organization's) in crypto."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        PAID = "paid", "Paid"
        REJECTED = "rejected", "Rejected"

    PROCESS_PERMISSION = "payouts.process_withdrawal"

    reference = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    amount = models.BigIntegerField(help_text="Nanodollars, held in withdrawals payable while pending.")
    network = models.ForeignKey(WithdrawalNetwork, on_delete=models.PROTECT, related_name="withdrawals")
    address = models.CharField(max_length=128)
    state = FSMField(default=State.PENDING, choices=State.choices, protected=True, db_index=True)
    tx_hash = models.CharField(max_length=128, blank=True, help_text="The payout transaction, once paid.")
    note = models.CharField(max_length=500, blank=True, help_text="Why it was rejected; shown to the member.")
    hold_transaction = models.OneToOneField(
        "billing.LedgerTransaction", on_delete=models.PROTECT, related_name="withdrawal_held"
    )
    settle_transaction = models.OneToOneField(
        "billing.LedgerTransaction",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="withdrawal_settled",
        help_text="Paid out, or returned to frozen balance.",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        permissions = [("process_withdrawal", "Can mark withdrawals paid or reject them")]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="withdrawal_amount_positive"),
            models.CheckConstraint(
                condition=~Q(state="paid") | ~Q(tx_hash=""), name="withdrawal_paid_has_tx_hash"
            ),
        ]

    def __str__(self) -> str:
        return f"Withdrawal {self.pk} ({self.state})"

    # Transitions only change the row; services lock it, call one, save, post
    # to the ledger and write the audit event in one database transaction.
    @transition(field=state, source=State.PENDING, target=State.PAID, permission=PROCESS_PERMISSION)
    def mark_paid(self, *, by, tx_hash: str, at) -> None:
        self.tx_hash = tx_hash
        self.decided_by = by
        self.decided_at = at

    mark_paid.alters_data = True

    @transition(field=state, source=State.PENDING, target=State.REJECTED, permission=PROCESS_PERMISSION)
    def reject(self, *, by, note: str, at) -> None:
        self.note = note
        self.decided_by = by
        self.decided_at = at

    reject.alters_data = True


class WithdrawalEvent(models.Model):
    """The audit trail of a withdrawal: every state it entered, who moved it and why."""

    withdrawal = models.ForeignKey(Withdrawal, on_delete=models.PROTECT, related_name="events")
    from_state = models.CharField(max_length=16, blank=True, help_text="Empty for the request itself.")
    to_state = models.CharField(max_length=16)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    at = models.DateTimeField(auto_now_add=True)
    note = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["at", "pk"]

    def __str__(self) -> str:
        return f"{self.from_state or '∅'} → {self.to_state}"

