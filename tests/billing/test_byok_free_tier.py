"""The BYOK free tier, written once in billing's SQL (billing_byok_fee_due), which the gateway's plan and
settlement both ask: SPEC.md, "platform fee 0 while the owner's month count ≤ 1,000,000, else 5%"."""

import pytest
from django.conf import settings
from django.db import connection

pytestmark = pytest.mark.django_db


def _fee_due(nth: int, free: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT billing_byok_fee_due(%s, %s)", [nth, free])
        return cursor.fetchone()[0]


def test_the_millionth_request_of_the_month_is_free_and_the_next_owes_the_fee():
    free = settings.HEADROOM_BYOK_FREE_REQUESTS
    assert free == 1_000_000
    assert not _fee_due(1, free)
    assert not _fee_due(free, free)
    assert _fee_due(free + 1, free)
