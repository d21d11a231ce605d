"""Withdrawal decisions keep their own domain audit trail (WithdrawalEvent): one row per decision, with the
staff member, the time and the move; it is shown read-only on the withdrawal's admin page."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.test import Client

from core.money import parse_usd
from payouts.models import WithdrawalEvent
from payouts.services import withdrawal_request
from tests.accounts.factories import UserFactory
from tests.payouts.factories import ADDRESSES, TX_HASHES, fund_frozen

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/payouts/withdrawal/"


@pytest.mark.parametrize(
    ("action", "fields", "to_state"),
    [
        ("reject_action", {"note": "Account under review"}, "rejected"),
        ("mark_paid_action", {"tx_hash_{pk}": TX_HASHES["evm"]}, "paid"),
    ],
)
def test_a_withdrawal_decision_leaves_one_event_with_the_staff_member(action, fields, to_state):
    # given a pending withdrawal and a staff member who may process it
    member = UserFactory()
    fund_frozen(member, "20.00")
    withdrawal = withdrawal_request(
        owner=member, actor=member, amount=parse_usd("10"), network="USDT-ERC20", address=ADDRESSES["USDT-ERC20"]
    )
    staff = UserFactory(is_staff=True)
    codenames = ["view_withdrawal", "process_withdrawal"]
    staff.user_permissions.add(*Permission.objects.filter(content_type__app_label="payouts", codename__in=codenames))
    client = Client()
    client.force_login(staff)
    since = list(WithdrawalEvent.objects.filter(withdrawal=withdrawal))

    # when the staff member decides it in the admin
    data = {key.format(pk=withdrawal.pk): value for key, value in fields.items()}
    client.post(CHANGELIST, {"action": action, ACTION_CHECKBOX_NAME: [withdrawal.pk], "apply": "1", **data})

    # then one event records who, when, from what to what
    [event] = WithdrawalEvent.objects.filter(withdrawal=withdrawal).exclude(pk__in=[e.pk for e in since])
    assert (event.actor, event.from_state, event.to_state) == (staff, "pending", to_state)
    assert event.at is not None
    # and the withdrawal's page shows it without a way to change it
    page = client.get(f"{CHANGELIST}{withdrawal.pk}/change/").content.decode()
    assert staff.email in page and 'name="events-0-note"' not in page
