"""Celery tasks for provider keys. Each takes a key id (never a secret), re-reads the row, calls one
service and is idempotent: running it twice, or on a key that moved on, changes nothing.

Transient upstream trouble (provider down, 5xx, 429) is retried with exponential backoff; when the
retries run out the reason is recorded on the key and its state is left as it was (a PENDING key is
picked up again by `provider_keys_sweep_task`). Periodic sweeps run from the beat schedule in
settings (CELERY_BEAT_SCHEDULE) and only enqueue per-key tasks.
"""

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from keys.models import ProviderKey
from keys.selectors import provider_key_exchange_candidates
from keys.services import (
    TransientCheckError,
    provider_key_drain,
    provider_key_leases_release_stale,
    provider_key_note_error,
    provider_key_probe,
    provider_key_reverify_exchange,
    provider_key_verify,
)
from keys.services.verification import paused_key_is_due

logger = logging.getLogger(__name__)
Status = ProviderKey.Status

MAX_RETRIES = 5
BACKOFF_BASE_SECONDS = 30
BACKOFF_MAX_SECONDS = 1800


def retry_countdown(retries: int) -> int:
    """Seconds before retry number `retries + 1`: 30, 60, 120, … capped at 30 minutes."""
    return min(BACKOFF_BASE_SECONDS * 2**retries, BACKOFF_MAX_SECONDS)


def _retry_or_note(task, key_id: int, error: TransientCheckError):
    """Retry with exponential backoff; after the last retry, record the reason and stop."""
    retries = task.request.retries
    if retries >= task.max_retries:
        provider_key_note_error(key_id=key_id, detail=str(error))
        logger.warning("provider key %s: %s gave up after %d retries", key_id, task.name, retries)
        return "gave_up"
    if task.request.is_eager:
        # Eager mode (the embedded default, tests): Celery would raise its Retry to the caller, so the
        # next attempt runs now, in-process; eager mode ignores countdowns anyway.
        return task.apply(args=(key_id,), retries=retries + 1).get(disable_sync_subtasks=False)
    raise task.retry(exc=error, countdown=retry_countdown(retries))


@shared_task(bind=True, max_retries=MAX_RETRIES, ignore_result=True)
def provider_key_verify_task(self, key_id: int) -> str:
    try:
        return provider_key_verify(key_id=key_id)
    except TransientCheckError as error:
        return _retry_or_note(self, key_id, error)


@shared_task(bind=True, max_retries=MAX_RETRIES, ignore_result=True)
def provider_key_reverify_exchange_task(self, key_id: int) -> str:
    try:
        return provider_key_reverify_exchange(key_id=key_id)
    except TransientCheckError as error:
        return _retry_or_note(self, key_id, error)


@shared_task(ignore_result=True)
def provider_key_probe_task(key_id: int) -> str:
    return provider_key_probe(key_id=key_id)


@shared_task(ignore_result=True)
def provider_key_drain_task(key_id: int) -> str:
    return provider_key_drain(key_id=key_id)


# --- periodic sweeps (beat) -----------------------------------------------------------------------


@shared_task(ignore_result=True)
def provider_keys_reverify_exchange_task() -> int:
    """Re-read the balance of every ACTIVE exchange key."""
    ids = list(provider_key_exchange_candidates().values_list("pk", flat=True))
    for key_id in ids:
        provider_key_reverify_exchange_task.delay(key_id)
    return len(ids)


@shared_task(ignore_result=True)
def provider_keys_probe_paused_task() -> int:
    """Probe every PAUSED key whose Retry-After (or default wait) has passed."""
    now = timezone.now()
    due = [k.pk for k in ProviderKey.objects.filter(status=Status.PAUSED) if paused_key_is_due(k, now=now)]
    for key_id in due:
        provider_key_probe_task.delay(key_id)
    return len(due)


@shared_task(ignore_result=True)
def provider_keys_sweep_task() -> dict:
    """Finish DISABLING keys, verify PENDING keys whose verification was lost or gave up, and drop
    leases of requests that died with their gateway process."""
    stale = timezone.now() - timedelta(seconds=settings.HEADROOM_PENDING_RECHECK_AFTER)
    disabling = list(ProviderKey.objects.filter(status=Status.DISABLING).values_list("pk", flat=True))
    pending = list(
        ProviderKey.objects.filter(status=Status.PENDING, updated_at__lt=stale).values_list("pk", flat=True)
    )
    for key_id in disabling:
        provider_key_drain_task.delay(key_id)
    for key_id in pending:
        provider_key_verify_task.delay(key_id)
    stale_leases = provider_key_leases_release_stale(
        older_than=timedelta(seconds=settings.HEADROOM_STALE_HOLD_SECONDS)
    )
    return {"disabling": len(disabling), "pending": len(pending), "stale_leases": stale_leases}
