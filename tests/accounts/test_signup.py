import re
import sys

import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from django.core.signals import got_request_exception
from django.test import Client

from accounts.models import User
from accounts.services import user_create, user_email_verified_complete
from billing.models import LedgerTransaction
from core.money import parse_usd
from billing.selectors import balances_for_owner, ledger_violations
from tests.concurrency import run_concurrently

pytestmark = pytest.mark.django_db

CODE = re.compile(r"^\s*([A-Z0-9]{4}-?[A-Z0-9]{4}|[A-Z0-9]{6})\s*$", re.M)


def _code_from_mail() -> str:
    match = CODE.search(mail.outbox[-1].body)
    assert match, mail.outbox[-1].body
    return match.group(1)


def _credits(user) -> int:
    return LedgerTransaction.objects.filter(idempotency_key=f"signup-credit:user:{user.pk}").count()


def test_browser_signup_grants_two_dollars_when_the_email_is_verified():
    client = Client()
    # when a visitor signs up through the form
    response = client.post(
        "/accounts/signup/",
        {"email": "new@example.com", "password1": "a-long-passphrase-1", "password2": "a-long-passphrase-1"},
    )
    # then they are asked for the e-mailed code, and hold nothing yet: a sign-up alone costs nothing to make
    assert response.status_code == 302
    assert "/accounts/confirm-email/" in response["Location"]
    user = User.objects.get(email="new@example.com")
    assert balances_for_owner(owner=user).main == 0
    # and verifying with the code credits $2.00 and signs them in to the dashboard
    code = _code_from_mail()
    response = client.post("/accounts/confirm-email/", {"code": code})
    assert response.status_code == 302
    assert client.get("/dashboard/").status_code == 200
    assert balances_for_owner(owner=user).main == parse_usd("2.00")
    # and the same code sent again changes nothing
    client.post("/accounts/confirm-email/", {"code": code})
    assert balances_for_owner(owner=user).main == parse_usd("2.00")
    assert _credits(user) == 1


def test_the_welcome_running_twice_still_credits_once():
    user = User.objects.create_user(email="twice@example.com", password="x")
    # when the verification hook fires twice (a retried request, a replayed signal)
    user_email_verified_complete(user=user)
    user_email_verified_complete(user=user)
    # then one credit, one transaction
    assert balances_for_owner(owner=user).main == parse_usd("2.00")
    assert _credits(user) == 1
    assert ledger_violations() == []


def _headless_signup(client: Client, email: str) -> str:
    """Sign up through allauth's headless API (app client); the session token of the pending flow."""
    response = client.post(
        "/_allauth/app/v1/auth/signup", {"email": email, "password": "a-long-passphrase-1"},
        content_type="application/json",
    )
    assert response.status_code == 401  # a pending flow: verify the e-mail
    body = response.json()
    assert any(flow["id"] == "verify_email" and flow.get("is_pending") for flow in body["data"]["flows"])
    return body["meta"]["session_token"]


def _headless_verify(client: Client, session_token: str, code: str):
    return client.post(
        "/_allauth/app/v1/auth/email/verify", {"key": code}, content_type="application/json",
        HTTP_X_SESSION_TOKEN=session_token,
    )


def test_headless_app_signup_verify_and_session_token():
    client = Client()
    session_token = _headless_signup(client, "app@example.com")
    assert balances_for_owner(owner=User.objects.get(email="app@example.com")).main == 0

    # verify by code
    response = _headless_verify(client, session_token, _code_from_mail())
    assert response.status_code == 200, response.content
    session_token = response.json()["meta"].get("session_token", session_token)

    # the session token authenticates the management API, and the credit is there
    response = client.get("/api/v1/me", HTTP_X_SESSION_TOKEN=session_token)
    assert response.status_code == 200
    assert response.json() == {"email": "app@example.com", "balance": {"main": "2.00", "frozen": "0.00"}}


def test_verifying_a_second_address_credits_nothing_more():
    client = Client()
    session_token = _headless_signup(client, "first@example.com")
    response = _headless_verify(client, session_token, _code_from_mail())
    session_token = response.json()["meta"].get("session_token", session_token)
    user = User.objects.get(email="first@example.com")
    # when the member adds a second address and verifies it too
    response = client.post(
        "/_allauth/app/v1/account/email", {"email": "second@example.com"}, content_type="application/json",
        HTTP_X_SESSION_TOKEN=session_token,
    )
    assert response.status_code == 200, response.content
    response = _headless_verify(client, session_token, _code_from_mail())
    assert response.status_code == 200, response.content
    assert EmailAddress.objects.filter(user=user, verified=True).count() == 2
    # then the signup credit is still the one
    assert balances_for_owner(owner=user).main == parse_usd("2.00")
    assert _credits(user) == 1


def test_an_operators_user_is_credited_only_when_vouched_for_and_the_admin_action_credits_once(admin_client):
    vouched = user_create(email="vouched@example.com", verified=True)
    pending = user_create(email="pending@example.com")
    assert balances_for_owner(owner=vouched).main == parse_usd("2.00")
    assert balances_for_owner(owner=pending).main == 0
    EmailAddress.objects.create(user=pending, email=pending.email, verified=False, primary=True)
    # when an admin marks the address verified (allauth's admin action), twice
    for _ in range(2):
        response = admin_client.post(
            "/admin/account/emailaddress/",
            {"action": "make_verified", "_selected_action": list(EmailAddress.objects.values_list("pk", flat=True))},
        )
        assert response.status_code == 302
    assert balances_for_owner(owner=pending).main == parse_usd("2.00")
    assert _credits(pending) == 1 and _credits(vouched) == 1


@pytest.mark.django_db(transaction=True)
def test_racing_confirmations_of_one_code_credit_once():
    session_token = _headless_signup(Client(), "race@example.com")
    code = _code_from_mail()
    user = User.objects.get(email="race@example.com")
    # when the same code is submitted from 6 connections at once
    raised = []
    got_request_exception.connect(lambda sender, **kw: raised.append(sys.exc_info()[1]), weak=False, dispatch_uid="race")
    try:
        statuses = run_concurrently(
            6, lambda i: _headless_verify(Client(raise_request_exception=False), session_token, code).status_code
        )
    finally:
        got_request_exception.disconnect(dispatch_uid="race")
    # then one verified it, the others got a clean 4xx, nothing raised, and the member was credited once
    print(f"\nconcurrent confirmations: {statuses}, raised: {raised!r}")
    assert statuses.count(200) == 1 and all(400 <= status < 500 for status in statuses if status != 200), statuses
    assert raised == []
    assert balances_for_owner(owner=user).main == parse_usd("2.00")
    assert _credits(user) == 1


def test_headless_login_with_existing_account():
    from tests.accounts.factories import UserFactory

    UserFactory(email="login@example.com", password="a-long-passphrase-1")
    client = Client()
    response = client.post(
        "/_allauth/app/v1/auth/login",
        {"email": "login@example.com", "password": "a-long-passphrase-1"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    token = response.json()["meta"]["session_token"]
    assert client.get("/api/v1/me", HTTP_X_SESSION_TOKEN=token).json()["email"] == "login@example.com"
