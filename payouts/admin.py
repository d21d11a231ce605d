"""Admin for payouts: networks (editable), withdrawals (decided through actions), conversions (read-only).

Withdrawals are never edited in a form: the "Mark paid" and "Reject" actions
call the services, which lock the row, move the money and write the audit
event, each exactly once. Both need the `payouts.process_withdrawal` permission.
"""

from django.contrib import admin, messages
from django.http import HttpRequest
from django.template.response import TemplateResponse

from billing.admin import ReadOnlyAdmin
from core.money import format_usd
from payouts.models import Conversion, Withdrawal, WithdrawalEvent, WithdrawalNetwork
from payouts.services import PayoutError, withdrawal_mark_paid, withdrawal_reject

ACTION_NONE_PENDING = "None of the selected withdrawals is pending."


@admin.register(WithdrawalNetwork)
class WithdrawalNetworkAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "address_format", "is_active", "position"]
    list_editable = ["is_active", "position"]
    list_filter = ["is_active", "address_format"]

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        # A network with withdrawals stays (PROTECT); deactivate it instead.
        return obj is None or not obj.withdrawals.exists()


class WithdrawalEventInline(admin.TabularInline):
    model = WithdrawalEvent
    extra = 0
    can_delete = False
    readonly_fields = ["at", "from_state", "to_state", "actor", "note"]
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Withdrawal)
class WithdrawalAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "user",
        "organization",
        "amount_usd",
        "network",
        "address",
        "state",
        "created_at",
        "decided_at",
    ]
    list_filter = ["state", "network"]
    search_fields = ["user__email", "organization__slug", "address", "tx_hash"]
    list_select_related = ["user", "organization", "network"]
    readonly_fields = [
        "user",
        "organization",
        "amount_usd",
        "network",
        "address",
        "state",
        "tx_hash",
        "note",
        "created_at",
        "decided_at",
        "decided_by",
        "hold_transaction",
        "settle_transaction",
    ]
    fields = readonly_fields
    inlines = [WithdrawalEventInline]
    actions = ["mark_paid_action", "reject_action"]

    @admin.display(description="Amount")
    def amount_usd(self, obj: Withdrawal) -> str:
        return format_usd(obj.amount)

    def has_process_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(Withdrawal.PROCESS_PERMISSION)

    def _intermediate(self, request: HttpRequest, queryset, *, template: str, title: str, action: str, **extra):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            "withdrawals": queryset,
            "action": action,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            **extra,
        }
        return TemplateResponse(request, template, context)

    def _pending(self, request: HttpRequest, queryset):
        """The selected withdrawals still pending, or None (and a warning) when there are none."""
        pending = queryset.filter(state=Withdrawal.State.PENDING).select_related("user", "organization", "network").order_by("pk")
        if not pending:
            self.message_user(request, ACTION_NONE_PENDING, messages.WARNING)
            return None
        return pending

    def _report(self, request: HttpRequest, done: list[int], refused: list[str], verb: str) -> None:
        if done:
            ids = ", ".join(str(pk) for pk in done)
            self.message_user(request, f"{verb} withdrawal(s) {ids}.", messages.SUCCESS)
        for reason in refused:
            self.message_user(request, reason, messages.ERROR)

    @admin.action(description="Mark selected withdrawals paid (enter each transaction hash)", permissions=["process"])
    def mark_paid_action(self, request: HttpRequest, queryset):
        pending = self._pending(request, queryset)
        if pending is None:
            return None
        if "apply" not in request.POST:
            return self._intermediate(
                request,
                pending,
                template="admin/payouts/withdrawal/mark_paid.html",
                title="Mark withdrawals paid",
                action="mark_paid_action",
            )
        done, refused = [], []
        for withdrawal in pending:
            tx_hash = request.POST.get(f"tx_hash_{withdrawal.pk}", "").strip()
            if not tx_hash:
                continue  # left blank: not paid yet
            try:
                withdrawal_mark_paid(withdrawal_id=withdrawal.pk, actor=request.user, tx_hash=tx_hash)
                done.append(withdrawal.pk)
            except PayoutError as error:
                refused.append(f"Withdrawal {withdrawal.pk}: {error}")
        self._report(request, done, refused, "Marked paid")
        return None

    @admin.action(description="Reject selected withdrawals (return the hold)", permissions=["process"])
    def reject_action(self, request: HttpRequest, queryset):
        pending = self._pending(request, queryset)
        if pending is None:
            return None
        note = request.POST.get("note", "").strip()
        if "apply" not in request.POST or not note:
            return self._intermediate(
                request,
                pending,
                template="admin/payouts/withdrawal/reject.html",
                title="Reject withdrawals",
                action="reject_action",
                note_missing="apply" in request.POST,
            )
        done, refused = [], []
        for withdrawal in pending:
            try:
                withdrawal_reject(withdrawal_id=withdrawal.pk, actor=request.user, note=note)
                done.append(withdrawal.pk)
            except PayoutError as error:
                refused.append(f"Withdrawal {withdrawal.pk}: {error}")
        self._report(request, done, refused, "Rejected")
        return None


@admin.register(Conversion)
class ConversionAdmin(ReadOnlyAdmin):
    list_display = ["id", "user", "organization", "amount_usd", "created_at"]
    search_fields = ["user__email", "organization__slug"]
    list_select_related = ["user", "organization"]
    readonly_fields = ["user", "organization", "amount_usd", "created_at", "ledger_transaction"]
    fields = readonly_fields

    @admin.display(description="Amount")
    def amount_usd(self, obj: Conversion) -> str:
        return format_usd(obj.amount)
