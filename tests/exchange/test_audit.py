"""Payout rules and the global rate (the exchange's switch) leave one audit record per change."""

from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client

from core.audit import audit_entry, audit_trail
from exchange.models import PayoutRateRule, PayoutRateRuleEvent
from tests.accounts.factories import UserFactory
from tests.exchange.factories import exchange_provider, rule

pytestmark = pytest.mark.django_db
RULES, GLOBAL = "/admin/exchange/payoutraterule/", "/admin/exchange/globalpayoutrate/"


@pytest.fixture
def staff():
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def admin_client(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


def _since() -> int:
    return PayoutRateRuleEvent.objects.order_by("-pgh_id").values_list("pgh_id", flat=True).first() or 0


def test_a_rule_changed_in_the_admin_is_audited(admin_client, staff):
    # given a provider rule at 50%
    provider = exchange_provider("deepseek")
    existing = rule("50", provider=provider)
    since = _since()

    # when an operator raises it
    response = admin_client.post(
        f"{RULES}{existing.pk}/change/", {"provider": provider.pk, "task": "", "percent": "60", "note": "promo"}
    )
    assert response.status_code == 302, response.content.decode()[:1000]

    # then one record names the operator, the time, and the old and new rate
    [event] = PayoutRateRuleEvent.objects.filter(pgh_id__gt=since)
    entry = audit_entry(event)
    assert entry.action == "update" and entry.actor == staff and entry.at is not None
    assert entry.before == {"percent": Decimal("50.00"), "note": ""}
    assert entry.after == {"percent": Decimal("60.00"), "note": "promo"}


def test_rules_added_and_deleted_in_the_admin_are_audited(admin_client, staff):
    member, provider = UserFactory(), exchange_provider("deepseek")

    admin_client.post(f"{RULES}add/", {"user": member.pk, "provider": provider.pk, "task": "", "percent": "75"})
    added = PayoutRateRule.objects.get()
    admin_client.post(f"{RULES}{added.pk}/delete/", {"post": "yes"})

    assert not PayoutRateRule.objects.exists()
    entries = audit_trail(added, event_model=PayoutRateRuleEvent)
    assert [(e.action, e.actor) for e in entries] == [("insert", staff), ("delete", staff)]
    assert entries[0].before == {} and entries[0].after["percent"] == Decimal("75.00")
    assert entries[1].before["percent"] == Decimal("75.00") and entries[1].after == {}


def test_the_global_switch_is_audited_with_the_operator(admin_client, staff):
    # given the global rate at 90%
    admin_client.post(GLOBAL, {"percent": "90"})
    since = _since()

    # when an operator switches the exchange off (confirmed)
    response = admin_client.post(GLOBAL, {"percent": "0", "confirmed": "yes"})
    assert response.status_code == 302

    # then one record has the operator, the old and the new rate; the admin's log entry stays too
    [event] = PayoutRateRuleEvent.objects.filter(pgh_id__gt=since)
    entry = audit_entry(event)
    assert entry.actor == staff and entry.origin == GLOBAL
    assert (entry.before, entry.after) == ({"percent": Decimal("90.00")}, {"percent": Decimal("0.00")})
    assert LogEntry.objects.filter(user=staff, change_message="Global payout rate 90.00% → 0.00%").exists()


def test_the_rules_trail_is_listed_read_only_in_the_admin(admin_client, staff):
    admin_client.post(GLOBAL, {"percent": "80"})

    page = admin_client.get("/admin/exchange/payoutrateruleevent/")

    assert page.status_code == 200 and staff.email in page.content.decode()
    assert admin_client.get("/admin/exchange/payoutrateruleevent/add/").status_code == 403
