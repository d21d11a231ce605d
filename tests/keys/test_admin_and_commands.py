"""Operators' surface: the admin (providers and clearance, price overrides, platform keys, key
actions) and the commands (add_platform_key from standard input)."""

import io

import pytest
from django.core.management import CommandError, call_command

from keys.models import Provider, ProviderKey, ProviderKeyTransition, ProviderModel
from keys.services import provider_key_secret, provider_prices_refresh
from tests.keys.factories import ProviderFactory, key_in_state, new_secret

pytestmark = pytest.mark.django_db
S = ProviderKey.Status


def test_an_operator_adds_a_platform_key_in_the_admin(admin_client, operator, make_provider, fake,
                                                      django_capture_on_commit_callbacks):
    provider = make_provider("none")
    secret = new_secret("sk-platform")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/keys/providerkey/add/", {"provider": provider.pk, "label": "payg 1", "secret": secret}
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    key = ProviderKey.objects.get()
    assert key.is_platform and key.owner_user is None and key.label == "payg 1"
    assert key.status == S.ACTIVE  # verified against the fake provider
    assert provider_key_secret(key=key) == secret
    assert ProviderKeyTransition.objects.filter(key=key, actor=operator, reason="enrolled").exists()


def test_an_operators_base_url_is_checked_in_the_admin(admin_client, settings):
    settings.HEADROOM_ALLOW_PRIVATE_UPSTREAMS = False
    data = {
        "slug": "internal",
        "name": "Internal",
        "base_url": "https://169.254.169.254/latest",
        "api_style": "openai",
        "balance_api": "none",
        "balance_currency": "USD",
        "pool_clearance": "pending",
        "prices_provider": "",
        "cap_field": "max_tokens",
        "is_active": "on",
        "catalogue_managed": "on",
    }
    response = admin_client.post("/admin/keys/provider/add/", data)
    assert response.status_code == 200
    assert "loopback, private, link-local or metadata" in response.content.decode()
    assert not Provider.objects.exists()
    response = admin_client.post("/admin/keys/provider/add/", {**data, "base_url": "https://api.example.net/v1"})
    assert response.status_code == 302
    assert Provider.objects.get().base_url == "https://api.example.net/v1"


def test_clearing_a_provider_in_the_admin_lets_its_waiting_donated_keys_join(admin_client):
    provider = ProviderFactory(pool_clearance=Provider.PoolClearance.PENDING)
    key_in_state(S.ACTIVE, provider=provider, donate_to_pool=True)
    response = admin_client.post(
        "/admin/keys/provider/", {"action": "clear_for_pool", "_selected_action": [provider.pk]}, follow=True
    )
    assert "1 donated key(s) now in the pool" in response.content.decode()
    provider.refresh_from_db()
    assert provider.pool_clearance == Provider.PoolClearance.CLEARED


def test_an_admin_price_is_an_override_that_refresh_keeps(admin_client):
    provider = ProviderFactory(slug="groq", prices_provider="groq")
    provider_prices_refresh(providers=[provider])
    model = ProviderModel.objects.get(provider=provider, name="llama-3.1-8b-instant")
    response = admin_client.post(
        f"/admin/keys/providermodel/{model.pk}/change/",
        {
            "provider": provider.pk,
            "name": model.name,
            "is_active": "on",
            "input_price_usd": "0.5",
            "output_price_usd": "",
        },
    )
    assert response.status_code == 302
    model.refresh_from_db()
    assert (model.input_price, model.output_price, model.price_source) == (500_000_000, None, "override")
    provider_prices_refresh(providers=[provider])
    model.refresh_from_db()
    assert (model.input_price, model.output_price) == (500_000_000, None)
    assert "0.50" in admin_client.get("/admin/keys/providermodel/").content.decode()


def test_admin_key_actions_go_through_the_services(admin_client, operator):
    active, paused = key_in_state(S.ACTIVE), key_in_state(S.PAUSED)
    response = admin_client.post(
        "/admin/keys/providerkey/",
        {"action": "reactivate_keys", "_selected_action": [active.pk, paused.pk]},
        follow=True,
    )
    html = response.content.decode()
    assert "cannot resume a key that is active" in html and "Reactivated: 1 key(s)" in html
    paused.refresh_from_db()
    assert paused.status == S.ACTIVE
    assert ProviderKeyTransition.objects.get(key=paused).actor == operator

    admin_client.post("/admin/keys/providerkey/", {"action": "remove_keys", "_selected_action": [active.pk]})
    active.refresh_from_db()
    assert active.status == S.INACTIVE and not active.has_secret


def test_keys_cannot_be_deleted_or_their_status_edited_in_the_admin(admin_client):
    key = key_in_state(S.ACTIVE)
    inlines = {
        "stats-TOTAL_FORMS": 1, "stats-INITIAL_FORMS": 1, "stats-MIN_NUM_FORMS": 0, "stats-MAX_NUM_FORMS": 1,
        "stats-0-key": key.pk, "transitions-TOTAL_FORMS": 0, "transitions-INITIAL_FORMS": 0,
        "transitions-MIN_NUM_FORMS": 0, "transitions-MAX_NUM_FORMS": 0,
    }
    response = admin_client.post(
        f"/admin/keys/providerkey/{key.pk}/change/", {"label": "renamed", "status": "paused", **inlines}
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.label, key.status) == ("renamed", S.ACTIVE)
    assert admin_client.get(f"/admin/keys/providerkey/{key.pk}/delete/").status_code == 403


# --- add_platform_key -----------------------------------------------------------------------------


def test_add_platform_key_reads_the_secret_from_standard_input(make_provider, fake, django_capture_on_commit_callbacks):
    make_provider("none", slug="groq")
    secret = new_secret("gsk")
    out = io.StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("add_platform_key", "groq", label="payg", stdin=io.StringIO(secret + "\n"), stdout=out)
    key = ProviderKey.objects.get()
    assert key.is_platform and key.label == "payg"
    assert provider_key_secret(key=key) == secret
    assert secret not in out.getvalue() and secret[-4:] in out.getvalue()


@pytest.mark.parametrize(
    ("provider", "stdin", "message"),
    [("nope", "sk-test-0123456789-abcdef", "Unknown or inactive provider"), ("groq", "\n", "No secret on standard input"),
     ("groq", "tiny\n", "invalid secret")],
)
def test_add_platform_key_refusals(provider, stdin, message):
    ProviderFactory(slug="groq")
    with pytest.raises(CommandError, match=message):
        call_command("add_platform_key", provider, stdin=io.StringIO(stdin), stdout=io.StringIO())
    assert not ProviderKey.objects.exists()
