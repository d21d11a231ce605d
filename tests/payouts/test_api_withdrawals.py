"""POST/GET /api/v1/payouts/withdrawals and /networks: the hold, the checks, the member's history."""

import json

import pytest
from rest_framework.test import APIClient

from billing.models import Account, LedgerTransaction
from core.money import parse_usd
from payouts.models import Withdrawal, WithdrawalEvent, WithdrawalNetwork
from payouts.services import withdrawal_mark_paid, withdrawal_reject
from tests.accounts.factories import UserFactory
from tests.conftest import signed_in_client
from tests.payouts.factories import (
    ADDRESSES,
    TX_HASHES,
    frozen_balance,
    fund_frozen,
    platform_balance,
    processor,
)

pytestmark = pytest.mark.django_db

URL = "/api/v1/payouts/withdrawals"


def _request(client, **fields):
    body = {"amount": "10.00", "network": "USDT-TRC20", "address": ADDRESSES["USDT-TRC20"], **fields}
    return client.post(URL, body, format="json")


def test_a_request_holds_the_amount_at_once(authed_client, user):
    # given $25 frozen
    fund_frozen(user, "25.00")
    payable_before = platform_balance(Account.Kind.WITHDRAWALS_PAYABLE)

    # when the member asks for $12.50 on TRON
    response = _request(authed_client, amount="12.50")

    # then it is pending and the amount already sits in withdrawals payable
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == "pending"
    assert body["amount"] == "12.50"
    assert body["network"] == "USDT-TRC20"
    assert body["balance"]["frozen"] == "12.50"
    assert frozen_balance(user) == parse_usd("12.50")
    assert platform_balance(Account.Kind.WITHDRAWALS_PAYABLE) - payable_before == parse_usd("12.50")
    withdrawal = Withdrawal.objects.get(pk=body["id"])
    assert withdrawal.hold_transaction.kind == LedgerTransaction.Kind.WITHDRAWAL_HOLD
    assert list(withdrawal.events.values_list("from_state", "to_state", "actor")) == [("", "pending", user.pk)]


@pytest.mark.parametrize("network", list(ADDRESSES))
def test_every_seeded_network_takes_its_own_address_format(authed_client, user, network):
    fund_frozen(user, "10.00")
    response = _request(authed_client, network=network, address=ADDRESSES[network])
    assert response.status_code == 201, response.content


def test_the_network_code_is_case_insensitive(authed_client, user):
    fund_frozen(user, "10.00")
    assert _request(authed_client, network="usdt-trc20").status_code == 201


@pytest.mark.parametrize(
    ("network", "address"),
    [
        ("USDT-TRC20", ADDRESSES["USDT-ERC20"]),  # an EVM address on TRON
        ("USDT-TRC20", "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6u"),  # one character off: checksum fails
        ("USDT-TRC20", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"),  # bitcoin base58check, not TRON
        ("USDT-ERC20", ADDRESSES["USDT-TRC20"]),
        ("USDT-ERC20", "0xdAC17F958D2ee523a2206206994597C13D831ec"),  # 39 hex
        ("USDT-ERC20", "0xZZC17F958D2ee523a2206206994597C13D831ec7"),
        ("USDC-SOL", "0OIl" + "1" * 36),  # not base58
        ("USDC-SOL", "1" * 31),  # too short
        ("BTC", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdr"),  # bech32 checksum fails
        ("BTC", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5MDQ"),  # mixed case
        ("BTC", "tb1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"),  # testnet
        ("BTC", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb"),
        ("BTC", ""),
    ],
)
def test_an_address_in_the_wrong_format_is_refused(authed_client, user, network, address):
    fund_frozen(user, "10.00")
    response = _request(authed_client, network=network, address=address)
    assert response.status_code == 400, response.content
    assert frozen_balance(user) == parse_usd("10.00")
    assert not Withdrawal.objects.exists()


def test_the_address_refusal_names_the_expected_format(authed_client, user):
    fund_frozen(user, "10.00")
    response = _request(authed_client, network="USDT-ERC20", address="nope")
    assert response.json() == {
        "detail": "That is not a valid USDT-ERC20 address: expected EVM (0x + 40 hex).",
        "code": "invalid_address",
    }


def test_an_unknown_or_inactive_network_is_refused_with_the_choices(authed_client, user):
    fund_frozen(user, "10.00")
    WithdrawalNetwork.objects.filter(code="BTC").update(is_active=False)
    for code in ["DOGE", "BTC"]:
        response = _request(authed_client, network=code, address=ADDRESSES["BTC"])
        assert response.status_code == 400
        detail = response.json()["detail"]
        assert f'"{code}" is not a network we pay out on' in detail
        assert "USDT-TRC20" in detail and "BTC," not in detail


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        ("9.999999999", "The minimum withdrawal is $10.00."),
        ("-10", "must not be negative"),
        ("NaN", "must be finite"),
        ("1e309", "below $1,000,000,000"),
        ("10.0000000001", "at most 9 decimal places"),
        ("15.01", "You can withdraw at most your frozen balance, $15.00."),
    ],
)
def test_bad_amounts_are_refused_with_the_reason(authed_client, user, amount, reason):
    fund_frozen(user, "15.00")
    response = _request(authed_client, amount=amount)
    assert response.status_code == 400
    assert reason in json.dumps(response.json())
    assert frozen_balance(user) == parse_usd("15.00")


def test_idempotency_key_replays_the_first_withdrawal(authed_client, user):
    fund_frozen(user, "30.00")
    first = authed_client.post(
        URL,
        {"amount": "10", "network": "BTC", "address": ADDRESSES["BTC"]},
        format="json",
        HTTP_IDEMPOTENCY_KEY="w-1",
    )
    replay = authed_client.post(
        URL,
        {"amount": "10", "network": "BTC", "address": ADDRESSES["BTC"]},
        format="json",
        HTTP_IDEMPOTENCY_KEY="w-1",
    )
    other = authed_client.post(
        URL,
        {"amount": "11", "network": "BTC", "address": ADDRESSES["BTC"]},
        format="json",
        HTTP_IDEMPOTENCY_KEY="w-1",
    )
    assert (first.status_code, replay.status_code, other.status_code) == (201, 201, 422)
    assert replay.json() == first.json()
    assert Withdrawal.objects.count() == 1
    assert frozen_balance(user) == parse_usd("20.00")


def test_the_member_sees_states_and_history(authed_client, user):
    # given three withdrawals: one paid, one rejected, one pending
    fund_frozen(user, "40.00")
    ids = [_request(authed_client, amount=str(a)).json()["id"] for a in (10, 11, 12)]
    admin = processor()
    withdrawal_mark_paid(withdrawal_id=ids[0], actor=admin, tx_hash=TX_HASHES["tron"])
    withdrawal_reject(withdrawal_id=ids[1], actor=admin, note="Address is on a sanctions list")

    # when the member lists them
    listed = authed_client.get(URL).json()["results"]

    # then each shows its state, the hash or the reason
    by_id = {row["id"]: row for row in listed}
    assert [by_id[i]["state"] for i in ids] == ["paid", "rejected", "pending"]
    assert by_id[ids[0]]["tx_hash"] == TX_HASHES["tron"]
    assert by_id[ids[1]]["note"] == "Address is on a sanctions list"
    detail = authed_client.get(f"{URL}/{ids[1]}").json()
    assert [(e["from_state"], e["to_state"]) for e in detail["events"]] == [("", "pending"), ("pending", "rejected")]
    # and the rejected hold is back in frozen balance
    assert frozen_balance(user) == parse_usd("40.00") - parse_usd("10") - parse_usd("12")


def test_another_members_withdrawal_is_404(authed_client, user):
    other = UserFactory()
    fund_frozen(other, "10.00")
    other_client = signed_in_client(other)
    withdrawal_id = _request(other_client).json()["id"]
    assert authed_client.get(f"{URL}/{withdrawal_id}").status_code == 404
    assert authed_client.get(URL).json()["count"] == 0


def test_networks_lists_the_active_ones(authed_client):
    WithdrawalNetwork.objects.filter(code="USDC-SOL").update(is_active=False)
    codes = [row["code"] for row in authed_client.get("/api/v1/payouts/networks").json()]
    assert codes == ["USDT-TRC20", "USDT-ERC20", "USDC-ERC20", "BTC"]


def test_creation_is_audited_with_the_member_as_actor(authed_client, user):
    fund_frozen(user, "10.00")
    _request(authed_client)
    event = WithdrawalEvent.objects.get()
    assert (event.actor, event.from_state, event.to_state) == (user, "", "pending")
