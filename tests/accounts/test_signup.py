import re

import pytest
from django.core import mail
from django.test import Client

from accounts.adapters import AccountAdapter
from accounts.models import User
from accounts.services import user_signup_complete
from billing.models import LedgerTransaction
from core.money import parse_usd
from billing.selectors import balances_for_owner, ledger_violations

pytestmark = pytest.mark.django_db

CODE = re.compile(r"^\s*([A-Z0-9]{4}-?[A-Z0-9]{4}|[A-Z0-9]{6})\s*$", re.M)


def _code_from_mail() -> str:
    match = CODE.search(mail.outbox[-1].body)
    assert match, mail.outbox[-1].body
    return match.group(1)


def test_browser_signup_grants_two_dollars_once():
    client = Client()
    # when a visitor signs up through the form
    response = client.post(
        "/accounts/signup/",
        {"email": "new@example.com", "password1": "a-long-passphrase-1", "password2": "a-long-passphrase-1"},
    )
    # then they are asked for the e-mailed code, and already hold $2.00
    assert response.status_code == 302
    assert "/accounts/confirm-email/" in response["Location"]
    user = User.objects.get(email="new@example.com")
    assert balances_for_owner(owner=user).main == parse_usd("2.00")
    # and verifying with the code signs them in to the dashboard
    response = client.post("/accounts/confirm-email/", {"code": _code_from_mail()})
    assert response.status_code == 302
    assert client.get("/dashboard/").status_code == 200


def test_signup_handler_running_twice_still_credits_once():
    user = User.objects.create_user(email="twice@example.com", password="x")
    # when the signup hook fires twice (a retried request, a replayed signal)
    user_signup_complete(user=user)
    user_signup_complete(user=user)
    # then one credit, one transaction
    assert balances_for_owner(owner=user).main == parse_usd("2.00")
    assert LedgerTransaction.objects.filter(idempotency_key=f"signup-credit:user:{user.pk}").count() == 1
    assert ledger_violations() == []


def test_adapter_save_user_twice_credits_once(rf):
    from allauth.account.forms import SignupForm

    form = SignupForm(data={"email": "a@example.com", "password1": "a-long-passphrase-1", "password2": "a-long-passphrase-1"})
    assert form.is_valid(), form.errors
    request = rf.post("/accounts/signup/")
    user = User()
    AccountAdapter(request).save_user(request, user, form)
    AccountAdapter(request).save_user(request, user, form)
    assert balances_for_owner(owner=user).main == parse_usd("2.00")


def test_headless_app_signup_verify_and_session_token():
    client = Client()
    # sign up through allauth's headless API (app client)
    response = client.post(
        "/_allauth/app/v1/auth/signup",
        {"email": "app@example.com", "password": "a-long-passphrase-1"},
        content_type="application/json",
    )
    assert response.status_code == 401  # a pending flow: verify the e-mail
    body = response.json()
    assert any(flow["id"] == "verify_email" and flow.get("is_pending") for flow in body["data"]["flows"])
    session_token = body["meta"]["session_token"]

    # verify by code
    response = client.post(
        "/_allauth/app/v1/auth/email/verify",
        {"key": _code_from_mail()},
        content_type="application/json",
        HTTP_X_SESSION_TOKEN=session_token,
    )
    assert response.status_code == 200, response.content
    session_token = response.json()["meta"].get("session_token", session_token)

    # the session token authenticates the management API
    response = client.get("/api/v1/me", HTTP_X_SESSION_TOKEN=session_token)
    assert response.status_code == 200
    assert response.json() == {"email": "app@example.com", "balance": {"main": "2.00", "frozen": "0.00"}}


def test_headless_login_with_existing_account():
    from allauth.account.models import EmailAddress

    from tests.accounts.factories import UserFactory

    user = UserFactory(email="login@example.com", password="a-long-passphrase-1")
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    client = Client()
    response = client.post(
        "/_allauth/app/v1/auth/login",
        {"email": "login@example.com", "password": "a-long-passphrase-1"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    token = response.json()["meta"]["session_token"]
    assert client.get("/api/v1/me", HTTP_X_SESSION_TOKEN=token).json()["email"] == "login@example.com"
