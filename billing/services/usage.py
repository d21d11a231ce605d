"""Balance holds left behind by gateway requests that never settled.

The gateway places and releases holds itself, in its hot-path statements
(pool.hotpath, through billing_hold_take in billing/sql/, and the release in the
settlement); this is the safety net for a process that died between.
"""

from datetime import timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from billing.models import Account, BalanceHold


def _release(holds) -> int:
    """Delete holds and give their amounts back to their accounts; each hold exactly once (a hold that
    its request's settlement deleted meanwhile is not there to delete again)."""
    released = 0
    for pk, account_id, amount in holds.values_list("pk", "account_id", "amount"):
        deleted, _ = BalanceHold.objects.filter(pk=pk).delete()
        if deleted:
            Account.objects.filter(pk=account_id).update(held=F("held") - amount)
            released += 1
    return released


def holds_release_stale(*, older_than: timedelta) -> int:
    """Release holds left open by a process that died mid-request; returns how many.

    No request lasts this long (the gateway's read timeout bounds it), so an
    older open hold can only belong to a request that will never settle.
    """
    cutoff = timezone.now() - older_than
    with transaction.atomic():
        return _release(BalanceHold.objects.filter(created_at__lt=cutoff))
