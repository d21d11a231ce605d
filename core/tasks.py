from celery import shared_task

from core.idempotency import idempotency_records_delete_expired


@shared_task(ignore_result=True)
def idempotency_records_delete_expired_task() -> int:
    """Delete Idempotency-Key records older than HEADROOM_IDEMPOTENCY_KEY_TTL (on the beat schedule)."""
    return idempotency_records_delete_expired()
