"""The withdrawal admin: actions with an intermediate form, guarded by the process permission."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.test import Client

from core.money import parse_usd
from payouts.models import Withdrawal, WithdrawalNetwork
from payouts.services import withdrawal_request
from tests.accounts.factories import UserFactory
from tests.payouts.factories import ADDRESSES, TX_HASHES, frozen_balance, fund_frozen

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/payouts/withdrawal/"


def _staff_client(*codenames: str) -> tuple[Client, object]:
    staff = UserFactory(is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(content_type__app_label="payouts", codename__in=codenames))
    client = Client()
    client.force_login(staff)
    return client, staff


@pytest.fixture
def pending() -> list[Withdrawal]:
    member = UserFactory()
    fund_frozen(member, "30.00")
    return [
        withdrawal_request(owner=member, actor=member, amount=parse_usd("10"), network="USDT-ERC20", address=ADDRESSES["USDT-ERC20"])
        for _ in range(2)
    ]


def test_mark_paid_asks_for_each_hash_then_pays(pending):
    client, staff = _staff_client("view_withdrawal", "process_withdrawal")
    selection = {"action": "mark_paid_action", ACTION_CHECKBOX_NAME: [w.pk for w in pending]}

    # when the admin picks the action, an intermediate page asks for the hashes
    page = client.post(CHANGELIST, selection)
    assert page.status_code == 200
    assert f'name="tx_hash_{pending[0].pk}"'.encode() in page.content
    assert Withdrawal.objects.filter(state="pending").count() == 2

    # and applying with one hash filled pays that one only
    applied = client.post(
        CHANGELIST, {**selection, "apply": "1", f"tx_hash_{pending[0].pk}": TX_HASHES["evm"]}, follow=True
    )
    assert f"Marked paid withdrawal(s) {pending[0].pk}.".encode() in applied.content
    states = dict(Withdrawal.objects.values_list("pk", "state"))
    assert states == {pending[0].pk: "paid", pending[1].pk: "pending"}
    assert Withdrawal.objects.get(pk=pending[0].pk).decided_by == staff


def test_a_bad_hash_is_reported_and_changes_nothing(pending):
    client, _ = _staff_client("view_withdrawal", "process_withdrawal")
    response = client.post(
        CHANGELIST,
        {
            "action": "mark_paid_action",
            ACTION_CHECKBOX_NAME: [pending[0].pk],
            "apply": "1",
            f"tx_hash_{pending[0].pk}": "not-a-hash",
        },
        follow=True,
    )
    assert b"not a USDT-ERC20 transaction hash" in response.content
    assert Withdrawal.objects.get(pk=pending[0].pk).state == "pending"


def test_reject_needs_a_reason_then_returns_the_holds(pending):
    client, _ = _staff_client("view_withdrawal", "process_withdrawal")
    selection = {"action": "reject_action", ACTION_CHECKBOX_NAME: [w.pk for w in pending]}
    no_reason = client.post(CHANGELIST, {**selection, "apply": "1", "note": " "})
    assert b"Say why the withdrawals are rejected" in no_reason.content
    assert Withdrawal.objects.filter(state="pending").count() == 2

    client.post(CHANGELIST, {**selection, "apply": "1", "note": "Account under review"}, follow=True)
    assert Withdrawal.objects.filter(state="rejected", note="Account under review").count() == 2
    assert frozen_balance(pending[0].user) == parse_usd("30")


def test_without_the_permission_the_actions_are_not_offered(pending):
    client, _ = _staff_client("view_withdrawal")
    page = client.get(CHANGELIST)
    assert page.status_code == 200
    assert b"mark_paid_action" not in page.content
    response = client.post(
        CHANGELIST, {"action": "reject_action", ACTION_CHECKBOX_NAME: [pending[0].pk], "apply": "1", "note": "x"}
    )
    assert response.status_code in (200, 302)
    assert Withdrawal.objects.get(pk=pending[0].pk).state == "pending"


def test_withdrawals_cannot_be_edited_or_deleted_in_forms(pending):
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    page = client.get(f"{CHANGELIST}{pending[0].pk}/change/")
    assert page.status_code == 200
    assert b'name="state"' not in page.content
    assert client.post(f"{CHANGELIST}{pending[0].pk}/delete/", {"post": "yes"}).status_code == 403
    assert Withdrawal.objects.filter(pk=pending[0].pk).exists()


def test_operators_manage_the_network_list(pending):
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    response = client.post(
        "/admin/payouts/withdrawalnetwork/add/",
        {
            "code": "USDT-SOL",
            "name": "Tether USD on Solana",
            "address_format": "solana",
            "is_active": "on",
            "position": 9,
        },
    )
    assert response.status_code == 302
    assert WithdrawalNetwork.objects.filter(code="USDT-SOL", address_format="solana").exists()
    # a network with withdrawals cannot be deleted (deactivate it instead)
    used = WithdrawalNetwork.objects.get(code="USDT-ERC20")
    assert client.post(f"/admin/payouts/withdrawalnetwork/{used.pk}/delete/", {"post": "yes"}).status_code == 403
