"""Inputs that used to answer 500 answer a clear 400 (or just work): issue 13's list, one test each."""

import hashlib

import pytest
from django.test import Client

from accounts.models import Organization
from tests.accounts.factories import UserFactory
from tests.concurrency import run_concurrently

DEEP = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a":' * 100_000 + "1" + "}" * 100_000


@pytest.mark.django_db
@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["array", "object"])
@pytest.mark.parametrize(
    "path",
    ["/api/v1/api-keys", "/api/v1/keys", "/api/v1/payouts/conversions", "/api/v1/payouts/withdrawals"],
)
def test_deeply_nested_json_to_the_management_api_is_a_400(authed_client, path, body):
    authed_client.raise_request_exception = False
    response = authed_client.post(path, body, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"detail": "The JSON body is nested too deeply.", "code": "invalid"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/_allauth/app/v1/auth/login", "/_allauth/browser/v1/auth/login", "/_allauth/app/v1/auth/signup"]
)
def test_deeply_nested_json_to_the_unauthenticated_sign_in_is_a_400_in_allauths_shape(path):
    response = Client(raise_request_exception=False).post(path, DEEP, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["message"] == "The JSON body is nested too deeply."


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["²", "１２", "12345678901234567890123", "-1", "1e3", " 7"])
def test_a_malformed_earnings_key_is_a_400_naming_it(authed_client, key):
    response = authed_client.get("/api/v1/exchange/earnings/daily", {"key": key})
    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["key"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/api/v1/payouts/conversions?organization=%00", "/api/v1/usage?limit=1%00", "/api/v1/keys?x%00=1"]
)
def test_a_nul_in_a_query_parameter_is_a_400_naming_it(authed_client, path):
    authed_client.raise_request_exception = False
    response = authed_client.get(path)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid" and "NUL" in response.json()["detail"]


@pytest.mark.django_db(transaction=True)
def test_twenty_members_creating_the_same_organization_at_once_all_get_one():
    members = [UserFactory() for _ in range(20)]

    def create(i: int) -> int:
        client = Client(raise_request_exception=False)
        client.force_login(members[i])
        return client.post("/dashboard/organizations/", {"name": "Acme"}).status_code

    statuses = run_concurrently(20, create)
    print(f"\n20 concurrent 'Acme': {statuses}")
    assert statuses == [302] * 20
    slugs = sorted(Organization.objects.values_list("slug", flat=True))
    assert len(set(slugs)) == 20 and "acme" in slugs
    assert all(org.memberships.count() == 1 for org in Organization.objects.all())


@pytest.mark.django_db
def test_a_sign_in_step_waiting_too_long_on_its_sessions_other_step_is_a_409_and_other_sessions_go_on(monkeypatch):
    from django.core.cache import cache

    from core import middleware

    monkeypatch.setattr(middleware, "STEP_WAIT_SECONDS", 0.1)
    # given a step of session "busy" in progress (its lock held)
    busy = "signin-step:" + hashlib.sha256(b"busy").hexdigest()
    assert cache.add(busy, 1, timeout=30)
    try:
        body = {"code": "ABCDEF"}
        response = Client().post("/_allauth/app/v1/auth/email/verify", body, content_type="application/json",
                                 HTTP_X_SESSION_TOKEN="busy")
        assert response.status_code == 409
        assert response.json()["errors"][0]["code"] == "conflict"
        # another session's step is not held up
        response = Client().post("/_allauth/app/v1/auth/email/verify", body, content_type="application/json",
                                 HTTP_X_SESSION_TOKEN="other")
        assert response.status_code != 409
    finally:
        cache.delete(busy)
