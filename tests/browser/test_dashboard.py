import re

import pytest
from django.core import mail

from accounts.models import ApiKey

pytestmark = pytest.mark.django_db(transaction=True)


def test_signup_verify_then_create_and_revoke_an_api_key(page):
    # A visitor signs up…
    page.goto("/")
    page.get_by_role("link", name="Sign up").first.click()
    page.fill("input[name=email]", "browser@example.com")
    page.fill("input[name=password1]", "a-long-passphrase-1")
    page.fill("input[name=password2]", "a-long-passphrase-1")
    page.get_by_role("button", name=re.compile("Sign Up", re.I)).click()

    # …enters the code from the e-mail…
    code = re.search(r"^\s*([A-Z0-9]{4}-?[A-Z0-9]{4}|[A-Z0-9]{6})\s*$", mail.outbox[-1].body, re.M).group(1)
    page.fill("input[name=code]", code)
    page.get_by_role("button", name=re.compile("Confirm", re.I)).click()

    # …lands on the dashboard with the signup credit…
    page.wait_for_url(re.compile(r"/dashboard/$"))
    assert page.get_by_test_id("main-balance").inner_text() == "$2.00"

    # …creates an API key through htmx and sees it exactly once…
    page.fill("input[name=name]", "laptop")
    page.get_by_role("button", name="Create key").click()
    new_key = page.get_by_test_id("new-key").inner_text()
    assert new_key.startswith("hr-")
    assert ApiKey.objects.get().prefix == new_key[:11]
    page.reload()
    assert page.get_by_test_id("new-key").count() == 0
    assert new_key not in page.content()

    # …and revokes it.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke").click()
    page.get_by_text("revoked", exact=True).wait_for()
    assert ApiKey.objects.get().revoked_at is not None
