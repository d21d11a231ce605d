"""The audit trail of operator decisions: who changed what, when, from what to what.

django-pghistory rather than a hand-written audit table or django-simple-history: its rows are written
by PostgreSQL triggers, so no write escapes them — an admin form, an admin action's
`queryset.update()`, a management command or a psql session alike — and a trigger's condition keeps it
silent unless an audited column changes. The actor comes from the request: `HistoryMiddleware`
(config/settings/base.py) attaches the signed-in user and the URL to every write of a POST/PUT/PATCH/DELETE
handled by Django (the admin and the management API; DRF's own authentication included); the catalogue
commands name themselves (`@pghistory.context(command=...)`); a task's writes carry neither. The event
tables are append-only (triggers refuse UPDATE and DELETE).

What is audited here, and what keeps its own domain trail (key states: keys.ProviderKeyTransition;
withdrawal decisions: payouts.WithdrawalEvent), is listed in the README ("Operator sign-in and audit").

Each audited model declares `@pghistory.track(*audit_trackers(), fields=[...])`: a snapshot of its audited
fields when a row is created, when one of them changes and when it is deleted. "Before" is the previous
snapshot of the same row, which is why creation is snapshotted too and each audited table got a
`baseline` snapshot of its existing rows when auditing began.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pghistory
from django.contrib.auth import get_user_model
from django.db import models

BASELINE = "baseline"


def audit_trackers() -> tuple[pghistory.RowEvent, ...]:
    # New instances per model: a tracker narrows its condition to its own model's fields in place.
    return (pghistory.InsertEvent(), pghistory.UpdateEvent(), pghistory.DeleteEvent())


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    action: str  # insert, update, delete, baseline
    actor: Any  # the User, or None (a command, a task, or a user since deleted)
    origin: str  # the request's URL, or "manage.py <command>"
    before: dict = field(default_factory=dict)  # only the fields that changed, on an update
    after: dict = field(default_factory=dict)


def _snapshot(event: models.Model) -> dict:
    tracked = {f.name for f in event.pgh_tracked_model._meta.fields}
    return {
        f.name: getattr(event, f.attname)
        for f in event._meta.fields
        if f.name in tracked and not f.name.startswith("pgh_")
    }


def _origin(metadata: dict) -> str:
    if metadata.get("command"):
        return f"manage.py {metadata['command']}"
    return metadata.get("url", "")


def audit_entry(event: models.Model) -> AuditEntry:
    """One event as before/after, the acting user resolved from its context."""
    metadata = event.pgh_context.metadata if event.pgh_context_id else {}
    user_id = metadata.get("user")
    actor = get_user_model().objects.filter(pk=user_id).first() if user_id is not None else None
    now = _snapshot(event)
    before, after = {}, now
    if event.pgh_label == "delete":
        before, after = now, {}
    elif event.pgh_label == "update":
        previous = (
            type(event).objects.filter(pgh_obj_id=event.pgh_obj_id, pgh_id__lt=event.pgh_id).order_by("-pgh_id").first()
        )
        was = _snapshot(previous) if previous is not None else {}
        changed = [name for name, value in now.items() if name not in was or was[name] != value]
        before = {name: was[name] for name in changed if name in was}
        after = {name: now[name] for name in changed}
    return AuditEntry(
        at=event.pgh_created_at, action=event.pgh_label, actor=actor, origin=_origin(metadata),
        before=before, after=after,
    )


def audit_trail(obj: models.Model, *, event_model: type[models.Model]) -> list[AuditEntry]:
    """Every audited change of `obj`, oldest first."""
    events = event_model.objects.filter(pgh_obj_id=obj.pk).select_related("pgh_context").order_by("pgh_id")
    return [audit_entry(event) for event in events]

