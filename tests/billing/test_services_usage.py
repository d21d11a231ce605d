"""The safety net for gateway holds, and the UTC month that BYOK counts and spend limits use.

Placing, charging and releasing are the gateway's own statements (pool.hotpath), tested through /v1
in tests/pool and statement by statement in tests/pool/hotpath/test_statements.py.
"""

from datetime import datetime, timedelta, timezone

import pytest
from django.db.models import F

from billing.models import Account, BalanceHold
from billing.selectors import balances_for_owner, ledger_violations, month_start
from billing.services import account_for_owner
from billing.tasks import stale_holds_release_task

pytestmark = pytest.mark.django_db


def _hold(user, request_id: str) -> BalanceHold:
    """A hold as the gateway leaves it: the row and the account's `held` raised together."""
    account = account_for_owner(owner=user, kind=Account.Kind.MAIN)
    Account.objects.filter(pk=account.pk).update(held=F("held") + 1)
    return BalanceHold.objects.create(account=account, amount=1, request_id=request_id)


def test_the_utc_month_decides_byok_counts_and_spend_limits():
    assert month_start(datetime(2026, 12, 31, 23, 59, 59, tzinfo=timezone.utc)).month == 12
    assert month_start(datetime(2027, 1, 1, 0, 0, 0, tzinfo=timezone.utc)).month == 1
    # a time zone east of UTC on the 1st is still the previous month in UTC
    tokyo = datetime(2027, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=9)))
    assert month_start(tokyo).month == 12


def test_stale_holds_are_released_by_the_periodic_task(user, settings):
    settings.HEADROOM_STALE_HOLD_SECONDS = 60
    fresh = _hold(user, "fresh")
    stale = _hold(user, "stale")
    BalanceHold.objects.filter(pk=stale.pk).update(created_at=stale.created_at - timedelta(seconds=61))
    assert stale_holds_release_task.delay().get() == 1
    assert stale_holds_release_task.delay().get() == 0  # each hold exactly once
    assert list(BalanceHold.objects.values_list("request_id", flat=True)) == ["fresh"]  # released: deleted
    assert Account.objects.get(pk=fresh.account_id).held == 1
    assert balances_for_owner(owner=user).main == 2_000_000_000  # a hold moves no money
    assert ledger_violations() == []
