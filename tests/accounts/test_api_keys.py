import pytest
from django.core.management import call_command
from django.db import connection
from rest_framework.test import APIClient

from accounts.models import ApiKey
from tests.accounts.factories import UserFactory

pytestmark = pytest.mark.django_db


def _create_key(client, **fields) -> dict:
    response = client.post("/api/v1/api-keys", {"name": "ci", **fields}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _all_database_text() -> str:
    """Every row of every table, as text: what someone with a database dump would see."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            chunks.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(chunks)


def test_create_returns_the_key_once_and_stores_only_a_hash(authed_client):
    body = _create_key(authed_client, key_pool_mode="platformOnly", byok_fallback=False, monthly_limit="25.50")
    raw = body["key"]
    assert raw.startswith("hr-") and len(raw) >= 3 + 43
    assert body["key_pool_mode"] == "platformOnly"
    assert body["byok_fallback"] is False
    assert body["monthly_limit"] == "25.50"
    assert body["prefix"] == raw[:11]
    # the raw key is nowhere in the database
    assert raw not in _all_database_text()
    assert raw[11:] not in _all_database_text()
    # and never listed again
    listed = authed_client.get("/api/v1/api-keys").json()
    assert [k["id"] for k in listed] == [body["id"]]
    assert "key" not in listed[0]


def test_bearer_key_authenticates_and_records_use(user):
    raw = _create_key(_client_for(user), scopes=["gateway", "read"])["key"]
    client = APIClient()
    response = client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 200
    assert response.json()["email"] == user.email
    assert ApiKey.objects.get().last_used_at is not None


def test_revoked_key_gets_401(user):
    owner = _client_for(user)
    created = _create_key(owner)
    assert owner.delete(f"/api/v1/api-keys/{created['id']}").status_code == 204
    response = APIClient().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {created['key']}")
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid or revoked API key.", "code": "authentication_failed"}


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Bearer hr-short",
        "Bearer sk-not-ours-0123456789012345678901234567890123456789",
        "Bearer hr-" + "A" * 43,
        "Bearer " + "hr-" + "x" * 10_240,
        "Bearer hr-\u00e9\u00e9\u00e9",
        "Bearer hr-" + "A" * 42 + "\x00",
        "bearer    ",
    ],
)
def test_malformed_or_huge_authorization_is_401_never_500(header):
    response = APIClient().get("/api/v1/me", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert "detail" in response.json()


def test_anonymous_gets_401_json_with_bearer_challenge():
    response = APIClient().get("/api/v1/me")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response["WWW-Authenticate"] == "Bearer"


def test_another_members_key_is_404(user):
    created = _create_key(_client_for(user))
    intruder = _client_for(UserFactory())
    assert intruder.get(f"/api/v1/api-keys/{created['id']}").status_code == 404
    assert intruder.delete(f"/api/v1/api-keys/{created['id']}").status_code == 404
    assert ApiKey.objects.get().revoked_at is None


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"monthly_limit": "-1"}, "monthly_limit", "negative"),
        ({"monthly_limit": "NaN"}, "monthly_limit", "finite"),
        ({"monthly_limit": "0.0000000001"}, "monthly_limit", "9 decimal"),
        ({"key_pool_mode": "everything"}, "key_pool_mode", "not a valid choice"),
        ({"name": ""}, "name", "blank"),
    ],
)
def test_bad_fields_are_400_with_the_reason(authed_client, fields, field, reason):
    response = authed_client.post("/api/v1/api-keys", {"name": "k", **fields}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert reason in " ".join(body["fields"][field])
    assert body["detail"].startswith(f"{field}: ")


def test_create_api_key_command_prints_a_working_key(user, capsys):
    call_command("create_api_key", user.email, "--name", "ops", "--scope", "gateway", "--scope", "read")
    raw = capsys.readouterr().out.strip()
    assert APIClient().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200
    assert ApiKey.objects.get().name == "ops"


def _client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user=user)
    return client
