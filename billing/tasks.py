from datetime import timedelta

from celery import shared_task
from django.conf import settings

from billing.services import holds_release_stale


@shared_task
def stale_holds_release_task() -> int:
    """Periodic: free balance reserved by requests that will never settle (a crashed process)."""
    return holds_release_stale(older_than=timedelta(seconds=settings.HEADROOM_STALE_HOLD_SECONDS))
