"""Admin building blocks shared by the apps: the read-only page of an audit trail (core/audit.py)."""

from django.contrib import admin
from django.http import HttpRequest

from core.audit import audit_entry


def _entry(event):
    # Three columns read one entry: resolve it (context, user, previous snapshot) once per row.
    if not hasattr(event, "_audit_entry"):
        event._audit_entry = audit_entry(event)
    return event._audit_entry


def _render(values: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in values.items()) or "—"


class AuditEventAdmin(admin.ModelAdmin):
    """An audited model's events: when, which row, what happened, who, before → after. Nobody may add,
    change or delete one here (the table refuses UPDATE and DELETE besides)."""

    list_display = ["pgh_created_at", "pgh_obj", "pgh_label", "actor", "origin", "before", "after"]
    list_filter = ["pgh_label"]
    list_select_related = ["pgh_obj", "pgh_context"]
    ordering = ["-pgh_id"]

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        return [*(f.name for f in self.model._meta.fields), "actor", "origin", "before", "after"]

    @admin.display(description="Actor")
    def actor(self, event) -> str:
        entry = _entry(event)
        return str(entry.actor) if entry.actor is not None else "— (no signed-in user)"

    @admin.display(description="Where")
    def origin(self, event) -> str:
        return _entry(event).origin or "—"

    @admin.display(description="Before")
    def before(self, event) -> str:
        return _render(_entry(event).before)

    @admin.display(description="After")
    def after(self, event) -> str:
        return _render(_entry(event).after)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
