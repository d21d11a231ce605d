import re

import pytest

from keys.models import ProviderKey
from tests.accounts.factories import UserFactory
from tests.fakeprovider import FakeProvider
from tests.keys.factories import ProviderFactory, new_secret, verify_email

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "a-long-passphrase-1"


@pytest.fixture(scope="module")
def fake():
    with FakeProvider() as server:
        yield server


@pytest.fixture
def provider(fake):
    return ProviderFactory(slug="fake-groq", name="Fake Groq", base_url=f"{fake.url}/v1")


def test_a_member_adds_a_provider_key_and_sees_it_active(page, provider, fake):
    member = UserFactory(email="keys@example.com", password=PASSWORD)
    verify_email(member)
    secret = new_secret("sk-browser")

    # The member signs in…
    page.goto("/accounts/login/")
    page.fill("input[name=login]", member.email)
    page.fill("input[name=password]", PASSWORD)
    page.get_by_role("button", name=re.compile("Sign In", re.IGNORECASE)).click()
    page.wait_for_url(re.compile(r"/dashboard/$"))

    # …opens the provider keys page from the navigation…
    page.get_by_role("link", name="Provider keys").click()
    page.wait_for_url(re.compile(r"/dashboard/keys/$"))
    assert page.get_by_text("No provider keys yet.").count() == 1

    # …adds a key through the htmx form (verified against the fake provider as it is saved)…
    page.select_option("select[name=provider]", "fake-groq")
    page.fill("input[name=secret]", secret)
    page.fill("input[name=label]", "my groq")
    page.get_by_role("button", name="Add key").click()
    row = page.locator("tr", has_text="my groq")
    row.wait_for()
    assert "…" + secret[-4:] in row.inner_text()
    assert page.input_value("input[name=secret]") == ""

    # …and, reloaded, the page lists it as active without ever showing the secret.
    page.reload()
    assert page.locator("tr", has_text="my groq").get_by_test_id("key-status").inner_text().startswith("Active")
    assert secret not in page.content()
    key = ProviderKey.objects.get(owner_user=member)
    assert (key.status, key.label, key.byok) == (ProviderKey.Status.ACTIVE, "my groq", True)
    assert fake.count(key=secret) >= 1
