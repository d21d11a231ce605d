"""API keys do what their scopes say, and moving money out needs a member who signed in recently.

A gateway API key is the string pasted into SDK configs, CI secrets and notebooks: leaked, it must not
manage the account. New keys are gateway-only; management scopes are opt-in; a withdrawal is never an
API key's, whatever its scopes, and a session needs a recent sign-in for it.
"""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db.migrations.recorder import MigrationRecorder
from django.test import override_settings
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.permissions import AllowAny
from rest_framework.test import APIClient

from accounts.models import ApiKey
from accounts.services import api_key_create
from keys.models import Provider, ProviderKey
from payouts.models import Conversion, Withdrawal
from tests.accounts.factories import UserFactory
from tests.conftest import signed_in_client
from tests.payouts.factories import ADDRESSES, fund_frozen

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-staple"  # UserFactory's
WITHDRAWAL = {"amount": "10.00", "network": "USDT-TRC20", "address": ADDRESSES["USDT-TRC20"]}


def _bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def _key(user, *scopes: str) -> str:
    return api_key_create(user=user, name="k", scopes=list(scopes) if scopes else None)[1]


def _counts() -> tuple[int, ...]:
    return (ApiKey.objects.count(), ProviderKey.objects.count(), Conversion.objects.count(),
            Withdrawal.objects.count(), ProviderKey.objects.filter(status=ProviderKey.Status.ACTIVE).count())


def test_a_new_key_is_gateway_only_by_default_and_says_so(authed_client):
    created = authed_client.post("/api/v1/api-keys", {"name": "sdk"}, format="json").json()
    assert created["scopes"] == ["gateway"]
    assert authed_client.get(f"/api/v1/api-keys/{created['id']}").json()["scopes"] == ["gateway"]


def test_a_leaked_gateway_key_cannot_manage_anything(user):
    fund_frozen(user, "20.00")
    owner = signed_in_client(user)
    provider = Provider.objects.create(slug="groq", name="Groq", base_url="https://api.groq.com/openai/v1")
    own_key = owner.post("/api/v1/keys", {"provider": "groq", "secret": "sk-own-" + "x" * 30}, format="json")
    assert own_key.status_code == 201, own_key.content
    leaked = _bearer(_key(user))
    before = _counts()
    attempts = [
        leaked.get("/api/v1/me"),
        leaked.get("/api/v1/api-keys"),
        leaked.post("/api/v1/api-keys", {"name": "stronger", "scopes": ["keys", "money"]}, format="json"),
        leaked.post("/api/v1/keys", {"provider": provider.slug, "secret": "sk-new-" + "y" * 30}, format="json"),
        leaked.delete(f"/api/v1/keys/{own_key.json()['id']}"),
        leaked.post(f"/api/v1/keys/{own_key.json()['id']}/deactivate"),
        leaked.post("/api/v1/payouts/conversions", {"amount": "1.00"}, format="json"),
        leaked.post("/api/v1/payouts/withdrawals", WITHDRAWAL, format="json"),
    ]
    assert [response.status_code for response in attempts] == [403] * len(attempts)
    assert {response.json()["code"] for response in attempts} == {"scope_required", "api_key_not_allowed"}
    assert "`read` scope" in attempts[0].json()["detail"]
    assert _counts() == before


def test_a_read_key_reads_but_writes_nothing(user):
    reader = _bearer(_key(user, "read"))
    for path in ("/api/v1/me", "/api/v1/api-keys", "/api/v1/keys", "/api/v1/usage", "/api/v1/providers",
                 "/api/v1/exchange/earnings", "/api/v1/payouts/conversions", "/api/v1/payouts/withdrawals"):
        assert reader.get(path).status_code == 200, path
    refused = reader.post("/api/v1/api-keys", {"name": "x"}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "scope_required"
    assert "`keys` scope" in refused.json()["detail"]


def test_the_money_scope_converts_but_never_withdraws(user):
    fund_frozen(user, "20.00")
    treasurer = _bearer(_key(user, "money"))
    assert treasurer.post("/api/v1/payouts/conversions", {"amount": "1.00"}, format="json").status_code == 201
    every_scope = _bearer(_key(user, *ApiKey.Scope.values))
    for client in (treasurer, every_scope):
        refused = client.post("/api/v1/payouts/withdrawals", WITHDRAWAL, format="json")
        assert refused.status_code == 403 and refused.json()["code"] == "api_key_not_allowed"
    assert not Withdrawal.objects.exists()


def test_a_key_cannot_mint_a_stronger_key(user):
    manager = _bearer(_key(user, "keys"))
    refused = manager.post("/api/v1/api-keys", {"name": "x", "scopes": ["keys", "money"]}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "scope_escalation"
    assert "money" in refused.json()["detail"]
    made = manager.post("/api/v1/api-keys", {"name": "y", "scopes": ["keys"]}, format="json")
    assert made.status_code == 201 and made.json()["scopes"] == ["keys"]
    for bad in (["admin"], []):
        assert manager.post("/api/v1/api-keys", {"name": "z", "scopes": bad}, format="json").status_code == 400


def test_withdrawing_needs_a_recent_sign_in(user):
    fund_frozen(user, "30.00")
    # a session that did not sign in recently (here: never recorded one)
    idle = APIClient()
    idle.force_login(user)
    refused = idle.post("/api/v1/payouts/withdrawals", WITHDRAWAL, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "reauthentication_required"
    assert "sign in again" in refused.json()["detail"]
    # a sign-in older than the window does not count either
    with override_settings(HEADROOM_MONEY_SIGN_IN_SECONDS=0):
        stale = signed_in_client(user).post("/api/v1/payouts/withdrawals", WITHDRAWAL, format="json")
        assert stale.status_code == 403
    assert not Withdrawal.objects.exists()
    # signed in just now, through the browser or allauth's app API with a session token
    assert signed_in_client(user).post("/api/v1/payouts/withdrawals", WITHDRAWAL, format="json").status_code == 201
    app = APIClient()
    login = app.post("/_allauth/app/v1/auth/login", {"email": user.email, "password": PASSWORD}, format="json")
    token = login.json()["meta"]["session_token"]
    made = app.post("/api/v1/payouts/withdrawals", WITHDRAWAL, format="json", HTTP_X_SESSION_TOKEN=token)
    assert made.status_code == 201, made.content
    assert Withdrawal.objects.count() == 2


def test_the_dashboard_creates_scoped_keys_and_shows_their_scopes(client):
    user = UserFactory()
    client.force_login(user)
    page = client.get("/dashboard/").content.decode()
    assert 'value="gateway"' in page and 'value="money"' in page
    client.post("/dashboard/api-keys/", {"name": "ci", "key_pool_mode": "any", "byok_fallback": "on",
                                         "scopes": ["gateway", "read"]})
    assert ApiKey.objects.get(name="ci").scopes == ["gateway", "read"]
    assert '<td data-testid="scopes">gateway, read</td>' in client.get("/dashboard/").content.decode()


def test_the_upgrade_keeps_old_keys_gateway_only_until_the_operator_opts_in(user, capsys):
    applied = MigrationRecorder.Migration.objects.get(app="accounts", name="0003_api_key_scopes").applied
    old, new = _key(user), _key(user, "gateway")
    ApiKey.objects.filter(prefix=old[:11]).update(created_at=applied - timedelta(days=30))
    call_command("api_keys_grant_legacy_scopes")
    assert "would give read, keys and money to 1 API key(s)" in capsys.readouterr().out
    assert ApiKey.objects.get(prefix=old[:11]).scopes == ["gateway"]
    call_command("api_keys_grant_legacy_scopes", "--yes")
    assert sorted(ApiKey.objects.get(prefix=old[:11]).scopes) == ["gateway", "keys", "money", "read"]
    assert ApiKey.objects.get(prefix=new[:11]).scopes == ["gateway"]


def _api_views(resolver=None, prefix=""):
    for pattern in (resolver or get_resolver()).url_patterns:
        if isinstance(pattern, URLResolver):
            yield from _api_views(pattern, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern) and getattr(pattern.callback, "cls", None) is not None:
            yield prefix + str(pattern.pattern), pattern.callback.cls


def test_every_management_endpoint_states_what_an_api_key_needs_or_is_public():
    views = [(route, view) for route, view in _api_views() if route.startswith("api/v1/")]
    assert len(views) >= 15
    undecided = [
        route for route, view in views
        if not hasattr(view, "api_key_scopes") and AllowAny not in view.permission_classes
        and not route.startswith("api/v1/schema")
    ]
    assert not undecided, f"endpoints that say nothing about API keys (so refuse them): {undecided}"


def test_the_admin_shows_a_keys_scopes_but_cannot_widen_them(admin_client):
    member = UserFactory()
    api_key_create(user=member, name="sdk")
    key = ApiKey.objects.get(user=member)
    page = admin_client.get(f"/admin/accounts/apikey/{key.pk}/change/")
    assert page.status_code == 200 and b"gateway" in page.content
    # when staff post the change form with a wider grant
    admin_client.post(f"/admin/accounts/apikey/{key.pk}/change/", {
        "name": "sdk", "user": member.pk, "scopes": "gateway,money", "key_pool_mode": key.key_pool_mode,
    })
    key.refresh_from_db()
    assert key.scopes == ["gateway"]
