"""Read-only views of the ledger: money moves through services, never through admin forms."""

from django.contrib import admin

from billing.models import Account, LedgerEntry, LedgerTransaction
from core.money import format_usd


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "kind", "balance_usd", "may_go_negative"]
    list_filter = ["kind"]
    search_fields = ["user__email", "organization__name"]

    @admin.display(description="Balance")
    def balance_usd(self, obj: Account) -> str:
        return format_usd(obj.balance)


class LedgerEntryInline(admin.TabularInline):
    model = LedgerEntry
    extra = 0
    can_delete = False
    readonly_fields = ["account", "amount", "created_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(LedgerTransaction)
class LedgerTransactionAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "kind", "idempotency_key", "memo"]
    list_filter = ["kind"]
    search_fields = ["idempotency_key"]
    inlines = [LedgerEntryInline]
