"""POST/GET /api/v1/payouts/conversions: frozen → main, amounts judged exactly, Idempotency-Key honoured."""

import json

import pytest
from django.core.management import call_command

from billing.models import LedgerTransaction
from core.money import parse_usd
from core.models import IdempotencyRecord
from payouts.models import Conversion
from tests.payouts.factories import ADDRESSES, frozen_balance, fund_frozen, main_balance

pytestmark = pytest.mark.django_db

URL = "/api/v1/payouts/conversions"
SIGNUP = parse_usd("2.00")


def _post_raw(client, body: str, **headers):
    """Send the body byte for byte: JSON numbers as the client wrote them."""
    return client.generic("POST", URL, body, content_type="application/json", **headers)


def test_conversion_moves_frozen_to_main(authed_client, user):
    # given $1.00 of exchange earnings
    fund_frozen(user, "1.00")

    # when the member converts $0.25
    response = authed_client.post(URL, {"amount": "0.25"}, format="json")

    # then frozen lost and main gained exactly that, in one ledger transaction
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["amount"] == "0.25"
    assert body["balance"] == {"main": "2.25", "frozen": "0.75"}
    assert frozen_balance(user) == parse_usd("0.75")
    assert main_balance(user) == SIGNUP + parse_usd("0.25")
    conversion = Conversion.objects.get(pk=body["id"])
    assert conversion.ledger_transaction.kind == LedgerTransaction.Kind.CONVERSION


def test_the_whole_frozen_balance_converts(authed_client, user):
    fund_frozen(user, "0.10")
    response = authed_client.post(URL, {"amount": "0.10"}, format="json")
    assert response.status_code == 201
    assert frozen_balance(user) == 0


def test_a_json_number_is_taken_exactly(authed_client, user):
    # given a JSON number with more digits than a float keeps (a float reads 123456789.12345679)
    fund_frozen(user, "200000000")
    response = _post_raw(authed_client, '{"amount": 123456789.123456789}')
    assert response.status_code == 201, response.content
    assert response.json()["amount"] == "123456789.123456789"
    assert frozen_balance(user) == parse_usd("200000000") - parse_usd("123456789.123456789")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"amount": "-1"}', "must not be negative"),
        ('{"amount": -1}', "must not be negative"),
        ('{"amount": "NaN"}', "must be finite"),
        ('{"amount": NaN}', "must be finite"),
        ('{"amount": "Infinity"}', "must be finite"),
        ('{"amount": "1e309"}', "below $1,000,000,000"),
        ('{"amount": 1e309}', "below $1,000,000,000"),
        ('{"amount": "0.1234567891"}', "at most 9 decimal places"),
        ('{"amount": 0.1234567891}', "at most 9 decimal places"),
        ('{"amount": "0.09"}', "minimum conversion is $0.10"),
        ('{"amount": 0.099999999}', "minimum conversion is $0.10"),
        ('{"amount": "0"}', "minimum conversion is $0.10"),
        ('{"amount": "5.00"}', "at most your frozen balance, $1.00"),
        ('{"amount": "ten"}', "is not a decimal amount"),
        ('{"amount": true}', "decimal strings"),
        ('{"amount": null}', "may not be null"),
        ('{"amount": ["1"]}', "decimal strings"),
        ("{}", "required"),
    ],
)
def test_bad_amounts_are_refused_with_the_reason(authed_client, user, body, reason):
    # given $1.00 frozen
    fund_frozen(user, "1.00")

    # when a bad amount is sent
    response = _post_raw(authed_client, body)

    # then 400 says why, and nothing moved
    assert response.status_code == 400, response.content
    assert reason in json.dumps(response.json())
    assert frozen_balance(user) == parse_usd("1.00")
    assert not Conversion.objects.exists()


def test_malformed_json_is_a_400(authed_client, user):
    response = _post_raw(authed_client, '{"amount": ')
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


def test_with_nothing_frozen_the_refusal_names_the_balance(authed_client):
    response = authed_client.post(URL, {"amount": "0.10"}, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "detail": "You can convert at most your frozen balance, $0.00.",
        "code": "insufficient_balance",
    }


def test_anonymous_gets_401(api_client):
    assert api_client.post(URL, {"amount": "1"}, format="json").status_code == 401
    assert api_client.get(URL).status_code == 401


def test_list_shows_only_my_conversions_newest_first(authed_client, user):
    from tests.accounts.factories import UserFactory

    fund_frozen(user, "1.00")
    other = UserFactory()
    fund_frozen(other, "1.00")
    from payouts.services import conversion_create

    conversion_create(owner=other, actor=other, amount=parse_usd("0.50"))
    authed_client.post(URL, {"amount": "0.10"}, format="json")
    authed_client.post(URL, {"amount": "0.20"}, format="json")

    body = authed_client.get(URL).json()
    assert body["count"] == 2
    assert [row["amount"] for row in body["results"]] == ["0.20", "0.10"]


class TestIdempotencyKey:
    def test_a_replay_returns_the_first_response_and_moves_money_once(self, authed_client, user):
        fund_frozen(user, "1.00")
        first = authed_client.post(URL, {"amount": "0.30"}, format="json", HTTP_IDEMPOTENCY_KEY="conv-1")
        # the balance changes in between: the replay still answers as the first time
        fund_frozen(user, "1.00")
        replay = authed_client.post(URL, {"amount": "0.30"}, format="json", HTTP_IDEMPOTENCY_KEY="conv-1")

        assert first.status_code == replay.status_code == 201
        assert replay.json() == first.json()
        assert replay["Idempotent-Replayed"] == "true"
        assert Conversion.objects.count() == 1
        assert frozen_balance(user) == parse_usd("1.70")

    def test_the_same_key_with_another_body_is_422(self, authed_client, user):
        fund_frozen(user, "1.00")
        authed_client.post(URL, {"amount": "0.30"}, format="json", HTTP_IDEMPOTENCY_KEY="conv-2")
        response = authed_client.post(URL, {"amount": "0.40"}, format="json", HTTP_IDEMPOTENCY_KEY="conv-2")
        assert response.status_code == 422
        assert "different request" in response.json()["detail"]
        assert Conversion.objects.count() == 1

    def test_the_same_key_on_another_endpoint_is_422(self, authed_client, user):
        fund_frozen(user, "20.00")
        authed_client.post(URL, {"amount": "0.30"}, format="json", HTTP_IDEMPOTENCY_KEY="shared")
        response = authed_client.post(
            "/api/v1/payouts/withdrawals",
            {"amount": "10.00", "network": "USDT-TRC20", "address": ADDRESSES["USDT-TRC20"]},
            format="json",
            HTTP_IDEMPOTENCY_KEY="shared",
        )
        assert response.status_code == 422

    def test_the_same_amount_written_differently_is_the_same_request(self, authed_client, user):
        # given a conversion of "0.10" sent with a key
        fund_frozen(user, "1.00")
        first = authed_client.post(URL, {"amount": "0.10"}, format="json", HTTP_IDEMPOTENCY_KEY="conv-parsed")
        # when the retry writes the same amount as the JSON number 0.1
        replay = authed_client.post(
            URL, data=b'{"amount": 0.1}', content_type="application/json", HTTP_IDEMPOTENCY_KEY="conv-parsed"
        )
        # then it is the same request: replayed, and the money moved once
        assert (replay.status_code, replay["Idempotent-Replayed"]) == (201, "true")
        assert replay.json() == first.json()
        assert Conversion.objects.count() == 1

    def test_an_expired_key_is_not_replayed(self, authed_client, user, settings):
        # given keys that are remembered for no time at all
        settings.HEADROOM_IDEMPOTENCY_KEY_TTL = 0
        fund_frozen(user, "1.00")
        authed_client.post(URL, {"amount": "0.30"}, format="json", HTTP_IDEMPOTENCY_KEY="conv-old")
        # when the same key comes again
        again = authed_client.post(URL, {"amount": "0.40"}, format="json", HTTP_IDEMPOTENCY_KEY="conv-old")
        # then it is a new request, not a replay nor a reuse
        assert again.status_code == 201
        assert "Idempotent-Replayed" not in again
        assert Conversion.objects.count() == 2
        assert IdempotencyRecord.objects.filter(key="conv-old").count() == 1

    def test_a_refusal_is_replayed_too(self, authed_client, user):
        # given a first attempt refused for want of balance
        first = authed_client.post(URL, {"amount": "0.50"}, format="json", HTTP_IDEMPOTENCY_KEY="conv-3")
        assert first.status_code == 400
        # when money arrives and the client retries with the same key
        fund_frozen(user, "1.00")
        replay = authed_client.post(URL, {"amount": "0.50"}, format="json", HTTP_IDEMPOTENCY_KEY="conv-3")
        # then the retry gets the first answer: a new attempt needs a new key
        assert (replay.status_code, replay.json()) == (400, first.json())
        assert not Conversion.objects.exists()

    def test_a_validation_error_is_not_remembered(self, authed_client, user):
        fund_frozen(user, "1.00")
        bad = authed_client.post(URL, {"amount": "NaN"}, format="json", HTTP_IDEMPOTENCY_KEY="conv-4")
        assert bad.status_code == 400
        assert not IdempotencyRecord.objects.filter(key="conv-4").exists()

    def test_keys_are_per_member(self, authed_client, user):
        from rest_framework.test import APIClient

        from tests.accounts.factories import UserFactory

        fund_frozen(user, "1.00")
        other = UserFactory()
        fund_frozen(other, "1.00")
        other_client = APIClient()
        other_client.force_authenticate(other)
        authed_client.post(URL, {"amount": "0.30"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
        response = other_client.post(URL, {"amount": "0.30"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
        assert response.status_code == 201
        assert Conversion.objects.count() == 2

    @pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\tkey", "ключ"])
    def test_an_unusable_key_is_400(self, authed_client, user, key):
        fund_frozen(user, "1.00")
        response = authed_client.post(URL, {"amount": "0.30"}, format="json", HTTP_IDEMPOTENCY_KEY=key)
        assert response.status_code == 400
        assert "Idempotency-Key" in response.json()["detail"]
        assert not Conversion.objects.exists()


def test_ledger_is_clean_after_conversions(authed_client, user):
    fund_frozen(user, "1.00")
    for amount in ["0.10", "0.333333333", "0.5"]:
        assert authed_client.post(URL, {"amount": amount}, format="json").status_code == 201
    call_command("ledger_check")  # raises CommandError on any violation
