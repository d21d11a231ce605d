"""The number of unrevoked API keys a member may hold is capped (HEADROOM_MAX_API_KEYS): 409 past it."""

import pytest
from rest_framework.test import APIClient

from accounts.models import ApiKey
from accounts.services import api_key_create
from tests.accounts.factories import UserFactory
from tests.concurrency import run_concurrently

URL = "/api/v1/api-keys"


def _as(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.django_db
def test_a_key_past_the_cap_is_refused_with_409_until_one_is_revoked(settings, user):
    # given a cap of three keys, and a member holding three
    settings.HEADROOM_MAX_API_KEYS = 3
    client = _as(user)
    ids = [client.post(URL, {"name": f"k{i}"}, format="json").json()["id"] for i in range(3)]
    # when they ask for a fourth
    refused = client.post(URL, {"name": "k4"}, format="json")
    # then it is refused with a stable code, and no key is made
    assert refused.status_code == 409, refused.content
    assert refused.json() == {
        "detail": "You already hold 3 API keys, the most a member may: revoke one you no longer use.",
        "code": "api_key_limit_reached",
    }
    assert ApiKey.objects.filter(user=user).count() == 3
    # and another member is not affected
    assert _as(UserFactory()).post(URL, {"name": "theirs"}, format="json").status_code == 201
    # and once one is revoked, there is room again
    assert client.delete(f"{URL}/{ids[0]}").status_code == 204
    assert client.post(URL, {"name": "k4"}, format="json").status_code == 201
    assert ApiKey.objects.filter(user=user, revoked_at__isnull=True).count() == 3


@pytest.mark.django_db
def test_the_dashboard_says_why_no_key_was_made(settings, client, user):
    settings.HEADROOM_MAX_API_KEYS = 1
    api_key_create(user=user, name="only")
    client.force_login(user)
    response = client.post("/dashboard/api-keys/", {"name": "second", "key_pool_mode": "any", "scopes": ["gateway"]})
    assert response.status_code == 409
    assert b"You already hold 1 API keys" in response.content
    assert ApiKey.objects.filter(user=user).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_creations_never_pass_the_cap(settings):
    # given a cap of five and a member holding three
    settings.HEADROOM_MAX_API_KEYS = 5
    user = UserFactory()
    for i in range(3):
        api_key_create(user=user, name=f"old{i}")

    def create(i: int) -> int:
        return _as(user).post(URL, {"name": f"raced{i}"}, format="json").status_code

    # when ten creations race
    statuses = run_concurrently(10, create)

    # then exactly two get through, and the member holds exactly five
    assert sorted(statuses) == [201] * 2 + [409] * 8
    assert ApiKey.objects.filter(user=user, revoked_at__isnull=True).count() == 5


@pytest.mark.django_db
def test_the_command_refuses_past_the_cap_with_a_message_not_a_traceback(settings):
    from django.core.management import CommandError, call_command

    from tests.accounts.factories import UserFactory

    settings.HEADROOM_MAX_API_KEYS = 1
    member = UserFactory()
    call_command("create_api_key", member.email)
    with pytest.raises(CommandError, match="API key"):
        call_command("create_api_key", member.email)


def test_the_schema_documents_the_throttle_and_the_cap():
    from rest_framework.test import APIClient

    schema = APIClient().get("/api/v1/schema?format=json").json()
    create = schema["paths"]["/api/v1/api-keys"]["post"]["responses"]
    assert {"409", "429"} <= set(create)
    assert "429" in schema["paths"]["/api/v1/me"]["get"]["responses"]
