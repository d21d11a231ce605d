"""Payouts under concurrent requests, on real PostgreSQL (threads, committed transactions)."""

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from core.money import parse_usd
from payouts.models import Conversion, Withdrawal
from payouts.services import (
    PayoutError,
    conversion_create,
    withdrawal_mark_paid,
    withdrawal_reject,
    withdrawal_request,
)
from tests.accounts.factories import UserFactory
from tests.concurrency import run_concurrently
from tests.payouts.factories import (
    ADDRESSES,
    TX_HASHES,
    frozen_balance,
    fund_frozen,
    processor,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_fifty_concurrent_ten_cent_conversions_against_a_dollar_exactly_ten_succeed():
    # given $1.00 frozen
    user = UserFactory()
    fund_frozen(user, "1.00")

    def convert(i: int) -> str:
        try:
            conversion_create(owner=user, actor=user, amount=parse_usd("0.10"))
            return "ok"
        except PayoutError:
            return "refused"

    # when fifty $0.10 conversions race
    outcomes = run_concurrently(50, convert)

    # then exactly ten succeed and the frozen balance is exactly spent
    assert outcomes.count("ok") == 10
    assert outcomes.count("refused") == 40
    assert Conversion.objects.filter(user=user).count() == 10
    assert frozen_balance(user) == 0
    call_command("ledger_check")


def test_twenty_parallel_ten_dollar_withdrawals_against_fifteen_exactly_one_succeeds():
    user = UserFactory()
    fund_frozen(user, "15.00")

    def withdraw(i: int) -> str:
        try:
            withdrawal_request(
                owner=user, actor=user, amount=parse_usd("10"), network="USDT-TRC20", address=ADDRESSES["USDT-TRC20"]
            )
            return "ok"
        except PayoutError:
            return "refused"

    outcomes = run_concurrently(20, withdraw)

    assert outcomes.count("ok") == 1
    assert Withdrawal.objects.filter(user=user).count() == 1
    assert frozen_balance(user) == parse_usd("5")
    call_command("ledger_check")


def test_concurrent_approve_and_reject_end_in_one_final_state():
    user = UserFactory()
    fund_frozen(user, "10.00")
    admin = processor()
    for _ in range(5):  # several rounds: either side may win a round
        withdrawal = withdrawal_request(
            owner=user, actor=user, amount=parse_usd("10"), network="USDT-TRC20", address=ADDRESSES["USDT-TRC20"]
        )

        def decide(i: int) -> str:
            try:
                if i % 2 == 0:
                    withdrawal_mark_paid(withdrawal_id=withdrawal.pk, actor=admin, tx_hash=TX_HASHES["tron"])
                    return "paid"
                withdrawal_reject(withdrawal_id=withdrawal.pk, actor=admin, note="race")
                return "rejected"
            except PayoutError:
                return "refused"

        outcomes = run_concurrently(2, decide)

        # exactly one decision took effect, the other was refused, and the row agrees
        assert sorted(outcomes) in (["paid", "refused"], ["refused", "rejected"])
        final = Withdrawal.objects.get(pk=withdrawal.pk)
        assert final.state == next(o for o in outcomes if o != "refused")
        assert final.events.count() == 2
        if final.state == "paid":
            fund_frozen(user, "10.00")  # top up for the next round
    call_command("ledger_check")


def test_the_same_idempotency_key_raced_converts_once():
    user = UserFactory()
    fund_frozen(user, "1.00")

    def post(i: int) -> tuple[int, dict]:
        client = APIClient()
        client.force_authenticate(user)
        response = client.post(
            "/api/v1/payouts/conversions", {"amount": "0.10"}, format="json", HTTP_IDEMPOTENCY_KEY="raced"
        )
        return response.status_code, response.json()

    results = run_concurrently(10, post)

    assert {status for status, _ in results} == {201}
    assert len({body["id"] for _, body in results}) == 1
    assert Conversion.objects.filter(user=user).count() == 1
    assert frozen_balance(user) == parse_usd("0.90")
    call_command("ledger_check")
