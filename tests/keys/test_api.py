"""The provider-key management API (/api/v1/keys, /api/v1/providers), end to end against the fake
provider: a member adds a key, sees it verified, donates it, pauses/reactivates/removes it, and
never sees the secret again."""

from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from accounts.models import Membership
from accounts.services import api_key_create, organization_create
from exchange.models import PayoutRateRule
from keys.models import Provider, ProviderKey
from keys.services import POOL_CONSENT_VERSION, provider_key_record_429
from tests.accounts.factories import UserFactory
from tests.keys.factories import key_in_state, new_secret

pytestmark = pytest.mark.django_db
S = ProviderKey.Status

PUBLIC_FIELDS = {
    "id",
    "provider",
    "organization",
    "label",
    "masked",
    "status",
    "byok",
    "donate_to_pool",
    "exchange",
    "last_error",
    "verified_balance",
    "verified_at",
    "last_used_at",
    "consecutive_429s",
    "failure_count",
    "retry_after_until",
    "removed",
    "created_at",
    "stats",
}


@pytest.fixture
def post(api, django_capture_on_commit_callbacks):
    """POST and run what the request enqueued on commit (the eager verification), as production does."""

    def do(url, data=None):
        with django_capture_on_commit_callbacks(execute=True):
            return api.post(url, data or {}, format="json")

    return do


def test_a_member_adds_a_key_sees_it_verified_donates_pauses_reactivates_and_removes_it(
    api, post, member, make_provider, fake, django_capture_on_commit_callbacks
):
    make_provider("deepseek", slug="deepseek")
    secret = new_secret("sk-live")
    fake.script(secret, balance=Decimal("20.00"))

    # adds a key: verified against the fake provider on commit
    created = post("/api/v1/keys", {"provider": "deepseek", "secret": secret, "label": "main"})
    assert created.status_code == 201, created.content
    body = created.json()
    assert set(body) == PUBLIC_FIELDS | {"history"}
    assert body["masked"] == "…" + secret[-4:] and body["provider"] == "deepseek" and body["byok"] is True
    key_id = body["id"]
    shown = api.get(f"/api/v1/keys/{key_id}").json()
    assert (shown["status"], shown["verified_balance"], shown["last_error"]) == ("active", "20.00", "")
    assert [(h["from_status"], h["to_status"]) for h in shown["history"]] == [
        ("pending", "pending"),
        ("pending", "active"),
    ]
    assert shown["stats"] == {
        "requests_served": 0, "prompt_tokens": 0, "completion_tokens": 0, "credits_earned": "0.00"
    }

    # donates it: consent needed once
    refused = api.patch(f"/api/v1/keys/{key_id}", {"donate_to_pool": True}, format="json")
    assert refused.status_code == 400
    assert refused.json()["code"] == "consent_required"
    assert refused.json()["detail"].startswith("consent required")
    donated = api.patch(f"/api/v1/keys/{key_id}", {"donate_to_pool": True, "consent": True}, format="json")
    assert donated.status_code == 200 and donated.json()["donate_to_pool"] is True
    assert api.get("/api/v1/pool-consent").json()["accepted_at"] is not None

    # the gateway pauses it after three 429s; the member reactivates it
    for _ in range(3):
        provider_key_record_429(key_id=key_id, retry_after_seconds=20)
    assert api.get(f"/api/v1/keys/{key_id}").json()["status"] == "paused"
    reactivated = post(f"/api/v1/keys/{key_id}/reactivate")
    assert reactivated.status_code == 200
    assert (reactivated.json()["status"], reactivated.json()["consecutive_429s"]) == ("active", 0)

    # removes it: drained at once (nothing in flight) and the secret erased
    with django_capture_on_commit_callbacks(execute=True):
        removed = api.delete(f"/api/v1/keys/{key_id}")
    assert removed.status_code == 202
    assert (removed.json()["status"], removed.json()["removed"]) == ("inactive", True)
    assert not ProviderKey.objects.get(pk=key_id).has_secret

    # and never sees the secret again, anywhere
    for response in (created, shown_response := api.get(f"/api/v1/keys/{key_id}"), api.get("/api/v1/keys")):
        assert secret not in response.content.decode()
    # the last four characters stay, so the owner can still tell which key the history belongs to
    assert shown_response.json()["masked"] == "…" + secret[-4:]


def test_a_key_the_provider_rejects_is_failed_with_the_reason_and_can_be_revalidated(post, api, make_provider, fake):
    make_provider("none", slug="groq")
    secret = new_secret("gsk")
    fake.script(secret, status=401, times=1)
    body = post("/api/v1/keys", {"provider": "groq", "secret": secret}).json()
    shown = api.get(f"/api/v1/keys/{body['id']}").json()
    assert (shown["status"], shown["last_error"]) == ("failed", "the provider rejected the key (HTTP 401)")

    revalidated = post(f"/api/v1/keys/{body['id']}/revalidate")
    assert revalidated.status_code == 200
    assert api.get(f"/api/v1/keys/{body['id']}").json()["status"] == "active"


def test_deactivate_keeps_the_key_listed_and_inactive(post, api, make_provider):
    make_provider("none", slug="groq")
    body = post("/api/v1/keys", {"provider": "groq", "secret": new_secret()}).json()
    response = post(f"/api/v1/keys/{body['id']}/deactivate")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["removed"]) == ("inactive", False)
    assert [k["id"] for k in api.get("/api/v1/keys").json()] == [body["id"]]


@pytest.mark.parametrize(
    ("payload", "status", "code", "detail"),
    [
        ({"provider": "nope"}, 400, "unknown_provider", "unknown provider"),
        ({"donate_to_pool": True}, 400, "consent_required", "consent required"),
        ({"provider": "excluded", "donate_to_pool": True, "consent": True}, 400, "provider_excluded",
         "provider excluded from the pool"),
        ({"exchange": True}, 400, "exchange_unsupported", "exchange not supported"),
        ({"secret": "short"}, 400, "invalid_secret", "invalid secret"),
        ({"organization": "someone-elses"}, 400, "unknown_organization", "unknown organization"),
    ],
)
def test_every_refusal_says_why(payload, status, code, detail, api, make_provider):
    make_provider("none", slug="groq")
    make_provider("none", slug="excluded", pool_clearance=Provider.PoolClearance.EXCLUDED)
    data = {"provider": "groq", "secret": new_secret(), **payload}
    response = api.post("/api/v1/keys", data, format="json")
    assert response.status_code == status
    assert response.json()["code"] == code
    assert response.json()["detail"].startswith(detail)
    assert not ProviderKey.objects.exists()


def test_a_duplicate_key_is_409(api, make_provider):
    make_provider("none", slug="groq")
    secret = new_secret()
    assert api.post("/api/v1/keys", {"provider": "groq", "secret": secret}, format="json").status_code == 201
    other = APIClient()
    other.force_authenticate(UserFactory())
    response = other.post("/api/v1/keys", {"provider": "groq", "secret": secret}, format="json")
    assert response.status_code == 409
    assert response.json() == {"detail": "duplicate key: this secret is already enrolled.", "code": "duplicate_key"}


def test_missing_fields_are_400_with_field_errors(api):
    response = api.post("/api/v1/keys", {}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert (body["code"], set(body["fields"])) == ("invalid", {"provider", "secret"})
    assert body["detail"].startswith(("provider: ", "secret: "))


def test_another_members_key_is_404_everywhere(api, make_provider):
    stranger_key = key_in_state(S.FAILED, provider=make_provider("none"))
    url = f"/api/v1/keys/{stranger_key.pk}"
    assert api.get(url).status_code == 404
    assert api.patch(url, {"label": "x"}, format="json").status_code == 404
    assert api.delete(url).status_code == 404
    for action in ("deactivate", "revalidate", "reactivate"):
        assert api.post(f"{url}/{action}").status_code == 404
    assert api.get("/api/v1/keys").json() == []
    stranger_key.refresh_from_db()
    assert stranger_key.status == S.FAILED and stranger_key.label == "table key"


def test_illegal_moves_are_refused_with_the_reason(api, member, make_provider):
    key = key_in_state(S.ACTIVE, owner=member, provider=make_provider("none"))
    response = api.post(f"/api/v1/keys/{key.pk}/revalidate")
    assert response.status_code == 400
    assert response.json() == {"detail": "cannot revalidate a key that is active.", "code": "illegal_transition"}
    response = api.post(f"/api/v1/keys/{key.pk}/reactivate")
    assert response.json()["detail"] == "cannot resume a key that is active."


def test_anonymous_callers_are_refused():
    assert APIClient().get("/api/v1/keys").status_code in (401, 403)
    assert APIClient().get("/api/v1/providers").status_code in (401, 403)


def test_an_api_key_with_the_keys_scope_authenticates_the_management_api(member, make_provider):
    make_provider("none", slug="groq")
    _, raw = api_key_create(user=member, name="ci", scopes=["gateway", "keys"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = api.post("/api/v1/keys", {"provider": "groq", "secret": new_secret()}, format="json")
    assert response.status_code == 201


def test_organization_owners_enrol_and_see_the_organizations_keys(member, api, make_provider):
    make_provider("none", slug="groq")
    org = organization_create(owner=member, name="Acme")
    response = api.post(
        "/api/v1/keys", {"provider": "groq", "secret": new_secret(), "organization": org.slug}, format="json"
    )
    assert response.status_code == 201 and response.json()["organization"] == org.slug
    # a plain member of the organization neither enrols nor sees them
    plain = UserFactory()
    Membership.objects.create(organization=org, user=plain, role=Membership.Role.MEMBER)
    other = APIClient()
    other.force_authenticate(plain)
    refused = other.post(
        "/api/v1/keys", {"provider": "groq", "secret": new_secret(), "organization": org.slug}, format="json"
    )
    assert refused.status_code == 403 and refused.json()["code"] == "not_org_owner"
    assert other.get("/api/v1/keys").json() == []
    assert other.get(f"/api/v1/keys/{response.json()['id']}").status_code == 404


def test_providers_list_clearance_and_whether_the_caller_may_use_the_exchange(api, member, make_provider):
    make_provider("none", slug="groq", name="Groq", pool_clearance=Provider.PoolClearance.CLEARED)
    deepseek = make_provider(
        "deepseek", slug="deepseek", name="DeepSeek", pool_clearance=Provider.PoolClearance.PENDING
    )
    make_provider("moonshot", slug="moonshot", name="Moonshot")
    make_provider("none", slug="gone", name="Gone", is_active=False)
    PayoutRateRule.objects.create(user=member, provider=deepseek, percent=0)

    listed = {p["slug"]: p for p in api.get("/api/v1/providers").json()}
    assert set(listed) == {"groq", "deepseek", "moonshot"}
    assert listed["groq"]["pool_clearance"] == "cleared"
    assert listed["groq"]["exchange"] == {
        "may_list": False,
        "reason": "exchange not supported: Groq has no balance API to verify a key against.",
    }
    assert listed["deepseek"]["pool_clearance"] == "pending"
    assert listed["deepseek"]["exchange"]["may_list"] is False
    assert listed["deepseek"]["exchange"]["reason"].startswith("exchange disabled")
    assert listed["moonshot"]["exchange"] == {"may_list": True, "reason": None}


def test_pool_consent_shows_the_terms_and_their_version(api):
    body = api.get("/api/v1/pool-consent").json()
    assert body["version"] == POOL_CONSENT_VERSION
    assert "shared pool" in body["text"] and body["accepted_at"] is None


def test_the_openapi_schema_documents_the_key_endpoints():
    schema = APIClient().get("/api/v1/schema", HTTP_ACCEPT="application/json").content.decode()
    for path in ("/api/v1/keys", "/api/v1/keys/{key_id}", "/api/v1/keys/{key_id}/revalidate", "/api/v1/providers"):
        assert path in schema
