"""The member's provider-keys page (/dashboard/keys/) through the Django test client: it lists only
the member's own keys, adds a key (verified against the fake provider), shows refusals with their
reason, runs the owner's moves, and never renders a secret. The view is pool.views (its chart is pool's
request records), the keys it shows and changes are keys'."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from django.utils.html import escape

from keys.models import PoolConsent, ProviderKey, ProviderKeyStats
from keys.services import POOL_CONSENT_TEXT
from pool.models import RequestRecord
from tests.accounts.factories import UserFactory
from tests.keys.factories import enrol, key_in_state, new_secret

pytestmark = pytest.mark.django_db
S = ProviderKey.Status
PAGE = "/dashboard/keys/"
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def browser(member) -> Client:
    client = Client()
    client.force_login(member)
    return client


@pytest.fixture
def post(browser, django_capture_on_commit_callbacks):
    """POST as the member and run what the request enqueued on commit (the eager verification)."""

    def do(url, data=None, **headers):
        with django_capture_on_commit_callbacks(execute=True):
            return browser.post(url, data or {}, **headers)

    return do


def _add(post, provider, secret, *, headers=None, **fields):
    data = {"provider": provider.slug, "secret": secret, "label": "main", "byok": "on", **fields}
    return post(f"{PAGE}add/", data, **(headers or {}))


def test_the_page_needs_a_signed_in_member():
    response = Client().get(PAGE)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_page_lists_only_the_members_own_keys_with_counters_and_a_chart(browser, member, provider):
    mine = enrol(member, provider, label="my-groq")
    theirs = enrol(UserFactory(), provider, label="their-groq")
    ProviderKeyStats.objects.filter(key=mine).update(
        requests_served=7, prompt_tokens=100, completion_tokens=23, credits_earned=1_250_000_000
    )
    now = timezone.now()
    for days_ago, count in ((0, 3), (2, 1)):
        for n in range(count):
            RequestRecord.objects.create(
                request_id=f"r-{days_ago}-{n}", created_at=now - timedelta(days=days_ago), requester=member,
                route=RequestRecord.Route.BYOK, provider=provider, model="m", provider_key=mine,
                outcome=RequestRecord.Outcome.SUCCEEDED, input_price=0, output_price=0,
            )

    response = browser.get(PAGE)

    assert response.status_code == 200
    html = response.content.decode()
    assert "my-groq" in html and mine.masked in html and "Active" in html
    assert "their-groq" not in html and theirs.masked not in html
    assert [row["key"].pk for row in response.context["rows"]] == [mine.pk]
    assert ">7<" in html and ">123<" in html and "$1.25" in html
    bars = response.context["rows"][0]["bars"]
    assert len(bars) == 30 and [b["requests"] for b in bars[-3:]] == [1, 0, 3]
    assert bars[-1]["height"] == 24 and bars[-3]["height"] == 8 and bars[-2]["height"] == 0
    assert html.count("<rect ") == 30 and "<title>" in html
    assert escape(POOL_CONSENT_TEXT) in html
    assert 'href="/dashboard/keys/"' in browser.get("/dashboard/").content.decode()


def test_a_member_adds_a_key_and_sees_it_verified(post, browser, member, provider, fake):
    secret = new_secret("sk-page")

    response = _add(post, provider, secret)

    assert response.status_code == 302 and response["Location"] == PAGE
    key = ProviderKey.objects.get(owner_user=member)
    assert (key.status, key.label, key.byok, key.donate_to_pool, key.exchange) == (S.ACTIVE, "main", True, False, False)
    assert fake.count(key=secret) >= 1
    page = browser.get(PAGE).content.decode()
    assert "Active" in page and key.masked in page
    assert secret not in page


def test_adding_through_htmx_renders_the_partial_with_the_new_key(post, member, provider):
    secret = new_secret("sk-page")

    response = _add(post, provider, secret, headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="provider-keys">') and "<html" not in html
    # Rendered before the request's commit runs the verification: the new row shows as pending here.
    assert "…" + secret[-4:] in html and "Pending verification" in html
    assert secret not in html
    assert ProviderKey.objects.get(owner_user=member).status == S.ACTIVE


def test_a_duplicate_secret_is_refused_with_the_reason_and_not_echoed(post, member, provider):
    secret = new_secret("sk-dup")
    enrol(UserFactory(), provider, secret=secret)

    for headers, status in (({}, 422), (HTMX, 200)):
        response = _add(post, provider, secret, headers=headers)
        assert response.status_code == status
        html = response.content.decode()
        assert "duplicate key: this secret is already enrolled." in html
        assert secret not in html
        assert 'type="password" name="secret"' in html and 'value="' + secret not in html
    assert not ProviderKey.objects.filter(owner_user=member).exists()


def test_donating_without_consent_is_refused_with_the_reason(post, member, provider):
    response = _add(post, provider, new_secret(), donate_to_pool="on")

    assert response.status_code == 422
    assert "consent required: donating a key to the pool needs your one-time consent" in response.content.decode()
    assert not ProviderKey.objects.filter(owner_user=member).exists()

    response = _add(post, provider, new_secret(), donate_to_pool="on", consent="on")

    assert response.status_code == 302
    key = ProviderKey.objects.get(owner_user=member)
    assert key.donate_to_pool and key.status == S.ACTIVE
    assert PoolConsent.objects.filter(user=member).exists()


def test_a_form_error_keeps_the_other_fields_but_never_the_secret(post, member, provider):
    secret = "short-secret"
    response = _add(post, provider, secret, label="my label")

    assert response.status_code == 422
    html = response.content.decode()
    assert "invalid secret" in html and 'value="my label"' in html and secret not in html


def test_deactivate_then_remove_through_post(post, browser, member, provider):
    key = enrol(member, provider, label="k1")

    response = post(f"{PAGE}{key.pk}/deactivate/")
    assert response.status_code == 302 and response["Location"] == PAGE
    key.refresh_from_db()
    assert key.status == S.INACTIVE and key.has_secret and key.removed_at is None

    response = post(f"{PAGE}{key.pk}/remove/", **HTMX)
    assert response.status_code == 200
    key.refresh_from_db()
    assert key.status == S.INACTIVE and not key.has_secret and key.removed_at is not None
    html = response.content.decode()
    assert "removed" in html and f"{PAGE}{key.pk}/remove/" not in html


def test_revalidate_and_reactivate_through_post(post, browser, member, provider):
    failed = key_in_state(S.FAILED, owner=member, provider=provider, last_error="the provider rejected the key")
    paused = key_in_state(S.PAUSED, owner=member, provider=provider)

    html = browser.get(PAGE).content.decode()
    assert "the provider rejected the key" in html
    assert f"{PAGE}{failed.pk}/revalidate/" in html and f"{PAGE}{paused.pk}/reactivate/" in html
    assert f"{PAGE}{failed.pk}/reactivate/" not in html and f"{PAGE}{paused.pk}/revalidate/" not in html

    response = post(f"{PAGE}{paused.pk}/reactivate/")
    assert response.status_code == 302
    paused.refresh_from_db()
    assert paused.status == S.ACTIVE

    response = post(f"{PAGE}{failed.pk}/revalidate/", **HTMX)
    assert response.status_code == 200
    failed.refresh_from_db()
    assert failed.status == S.ACTIVE  # verified again against the fake provider


def test_a_refused_move_says_why(post, browser, member, provider):
    key = enrol(member, provider)

    response = post(f"{PAGE}{key.pk}/reactivate/")

    assert response.status_code == 302
    assert "cannot" in browser.get(PAGE).content.decode()
    key.refresh_from_db()
    assert key.status == S.ACTIVE


def test_another_members_key_is_not_found(post, provider):
    other = enrol(UserFactory(), provider)

    for action in ("deactivate", "remove", "revalidate", "reactivate"):
        assert post(f"{PAGE}{other.pk}/{action}/").status_code == 404
    other.refresh_from_db()
    assert other.status == S.ACTIVE and other.has_secret


def test_moves_need_post(browser, member, provider):
    key = enrol(member, provider)
    assert browser.get(f"{PAGE}{key.pk}/remove/").status_code == 405
    assert browser.post(PAGE).status_code == 405


def test_the_raw_secret_never_appears_in_any_rendered_page(post, browser, member, provider):
    secret = new_secret("sk-never-shown")
    _add(post, provider, secret)
    key = ProviderKey.objects.get(owner_user=member)
    pages = [browser.get(PAGE), browser.get(PAGE, **HTMX), browser.get("/dashboard/"), browser.get("/dashboard/exchange/")]
    pages.append(post(f"{PAGE}{key.pk}/deactivate/", **HTMX))
    pages.append(_add(post, provider, secret))  # refused as a duplicate of a deactivated (still held) secret
    for response in pages:
        assert secret not in response.content.decode()
