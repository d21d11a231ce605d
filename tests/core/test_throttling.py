"""The management API's throttles: per member, per client IP, and stricter on moving money and minting
API keys; 429 in the API's one error shape with Retry-After. Rates are shrunk per test; the counts
start empty in every test (tests/conftest.py)."""

import pytest
from rest_framework.test import APIClient

from core.money import parse_usd
from payouts.models import Conversion
from tests.accounts.factories import UserFactory
from tests.payouts.factories import frozen_balance, fund_frozen

pytestmark = pytest.mark.django_db


@pytest.fixture
def rates(settings):
    """Small rates for the test; the others stay out of the way."""

    def set_rates(**small):
        defaults = {"member": "1000/minute", "anon": "1000/minute", "money": "1000/minute", "api_keys": "1000/minute"}
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {**defaults, **small}}

    return set_rates


def _as(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _assert_throttled(response) -> None:
    assert response.status_code == 429, response.content
    body = response.json()
    assert body["code"] == "throttled"
    assert set(body) == {"detail", "code"}
    assert 0 < int(response["Retry-After"]) <= 60


def test_the_request_past_a_members_rate_is_429_and_another_member_is_unaffected(rates):
    # given three requests a minute per member
    rates(member="3/minute")
    alice, bob = _as(UserFactory()), _as(UserFactory())
    # when alice makes four
    answers = [alice.get("/api/v1/api-keys").status_code for _ in range(3)]
    fourth = alice.get("/api/v1/api-keys")
    # then the fourth is throttled, on any endpoint, and bob is not
    assert answers == [200, 200, 200]
    _assert_throttled(fourth)
    _assert_throttled(alice.get("/api/v1/me"))
    assert bob.get("/api/v1/api-keys").status_code == 200


def test_an_api_key_counts_against_its_member(rates, user):
    # given a member signed in, who also holds an API key that may read
    rates(member="2/minute")
    from accounts.services import api_key_create

    _, raw = api_key_create(user=user, name="reader", scopes=["read"])
    by_key = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    # when each is used once, then a third request by either is over the member's rate
    assert _as(user).get("/api/v1/me").status_code == 200
    assert by_key.get("/api/v1/me").status_code == 200
    _assert_throttled(by_key.get("/api/v1/me"))


def test_anonymous_requests_count_per_client_ip_and_a_forged_forwarded_header_does_not_escape(rates):
    # given two anonymous requests a minute per IP, and no trusted proxy
    rates(anon="2/minute")
    client = APIClient(REMOTE_ADDR="203.0.113.7")
    assert [client.get("/api/v1/pool").status_code for _ in range(2)] == [200, 200]
    # when the same address asks again, even claiming another one
    _assert_throttled(client.get("/api/v1/pool", HTTP_X_FORWARDED_FOR="198.51.100.1"))
    # then another client address is still served
    assert APIClient(REMOTE_ADDR="203.0.113.8").get("/api/v1/pool").status_code == 200


def test_conversions_have_the_stricter_money_rate_on_writes_only(rates, user):
    # given two money-moving writes a minute, and $1.00 frozen
    rates(money="2/minute")
    fund_frozen(user, "1.00")
    client = _as(user)
    # when three conversions are asked for
    statuses = [client.post("/api/v1/payouts/conversions", {"amount": "0.10"}, format="json").status_code
                for _ in range(2)]
    third = client.post("/api/v1/payouts/conversions", {"amount": "0.10"}, format="json")
    # then the third is throttled and moves nothing; reading the history is not counted
    assert statuses == [201, 201]
    _assert_throttled(third)
    assert Conversion.objects.filter(user=user).count() == 2
    assert frozen_balance(user) == parse_usd("0.80")
    assert client.get("/api/v1/payouts/conversions").status_code == 200
    # and another member still converts
    other = UserFactory()
    fund_frozen(other, "1.00")
    assert _as(other).post("/api/v1/payouts/conversions", {"amount": "0.10"}, format="json").status_code == 201


def test_withdrawal_requests_share_the_money_rate(rates, user):
    rates(money="1/minute")
    fund_frozen(user, "1.00")
    client = _as(user)
    client.post("/api/v1/payouts/conversions", {"amount": "0.10"}, format="json")
    from tests.conftest import signed_in_client

    # a signed-in session (withdrawing needs one) is the same member: the conversion used the minute's one
    response = signed_in_client(user).post(
        "/api/v1/payouts/withdrawals", {"amount": "10.00", "network": "BTC", "address": "x"}, format="json"
    )
    _assert_throttled(response)


def test_creating_api_keys_has_its_own_stricter_rate(rates, user):
    # given two API keys a minute
    rates(api_keys="2/minute")
    client = _as(user)
    created = [client.post("/api/v1/api-keys", {"name": f"k{i}"}, format="json").status_code for i in range(2)]
    # when a third is asked for, then it is throttled, while listing keys goes on
    third = client.post("/api/v1/api-keys", {"name": "k3"}, format="json")
    assert created == [201, 201]
    _assert_throttled(third)
    assert len(client.get("/api/v1/api-keys").json()) == 2


def test_the_default_rates_come_from_settings_and_are_stricter_for_money_and_keys(settings):
    from rest_framework.throttling import SimpleRateThrottle

    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    per_minute = {scope: SimpleRateThrottle.parse_rate(None, rate) for scope, rate in rates.items()}
    for scope in ("money", "api_keys"):
        assert per_minute[scope][0] / per_minute[scope][1] < per_minute["member"][0] / per_minute["member"][1]


def test_a_request_without_a_client_address_is_counted_not_refused(rates):
    # a unix socket without a trusted proxy gives no address: such requests share one count
    rates(anon="1/minute")
    client = APIClient(REMOTE_ADDR="")
    assert client.get("/api/v1/pool").status_code == 200
    _assert_throttled(client.get("/api/v1/pool"))
