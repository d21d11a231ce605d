"""Secrets are shown masked, the same way everywhere (core.masking)."""

import pytest

from core.masking import masked_head, masked_tail, secret_tail
from tests.accounts.factories import UserFactory


def test_a_provider_key_shows_its_last_four_characters_only():
    secret = "sk-live-0123456789abcdefa1b2"
    assert masked_tail(secret_tail(secret)) == "…a1b2"
    assert masked_tail("") == "…"
    assert masked_tail("", missing="(removed)") == "(removed)"


@pytest.mark.django_db
def test_the_dashboard_shows_a_gateway_key_by_its_head(client):
    from accounts.services import api_key_create

    user = UserFactory()
    api_key, raw = api_key_create(user=user, name="ci")
    client.force_login(user)
    page = client.get("/dashboard/").content.decode()
    assert masked_head(api_key.prefix) in page
    assert raw not in page
    assert str(api_key) == f"ci ({raw[:11]}…)"
