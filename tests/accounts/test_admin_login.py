"""The admin login goes through allauth's rate-limited login: brute force is refused per client IP and per
account, never for everyone, and behind a trusted proxy the client's own address is what counts."""

import pytest
from django.core.cache import cache
from django.test import Client

from tests.accounts.factories import UserFactory

PASSWORD = "correct-horse-battery-staple"
TOO_MANY = "Too many failed login attempts"
ATTACKER, BYSTANDER, VICTIM_ELSEWHERE = "203.0.113.9", "198.51.100.7", "192.0.2.44"


@pytest.fixture
def rate_limits(settings):
    """allauth's default limits (the test settings turn them off), with counters of this test only."""
    del settings.ACCOUNT_RATE_LIMITS
    cache.clear()
    yield
    cache.clear()


def _login_page(client: Client) -> str:
    # The admin's own login form no longer takes a password: it sends staff to allauth's login.
    response = client.post("/admin/login/?next=/admin/", {"username": "x@example.com", "password": "x"})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert "next=" in response["Location"]
    return response["Location"]


def _signed_in_to_admin(client: Client) -> bool:
    return client.get("/admin/").status_code == 200


def _hammer(client: Client, url: str, email: str, **headers) -> list[int]:
    return [
        client.post(url, {"login": email, "password": f"wrong-{attempt}"}, headers=headers).status_code
        for attempt in range(40)
    ]


@pytest.mark.django_db
def test_admin_login_is_throttled_per_ip_and_per_account_not_for_everyone(rate_limits):
    # given two staff members, one of them attacked from one address
    victim = UserFactory(email="ops@example.com", is_staff=True)
    colleague = UserFactory(email="colleague@example.com", is_staff=True)
    attacker = Client(REMOTE_ADDR=ATTACKER)
    url = _login_page(attacker)

    # when 40 wrong passwords are tried there
    statuses = _hammer(attacker, url, victim.email)

    # then the attacker is throttled, and the right password is refused from there
    assert statuses[-1] == 429 and 302 not in statuses
    assert attacker.post(url, {"login": victim.email, "password": PASSWORD}).status_code == 429
    assert not _signed_in_to_admin(attacker)
    # and the attacked account is locked for its window from any address, the right password included
    elsewhere = Client(REMOTE_ADDR=VICTIM_ELSEWHERE)
    response = elsewhere.post(url, {"login": victim.email, "password": PASSWORD})
    assert response.status_code == 200 and TOO_MANY in response.content.decode()
    assert not _signed_in_to_admin(elsewhere)
    # but another account from another address signs in and reaches the admin
    bystander = Client(REMOTE_ADDR=BYSTANDER)
    response = bystander.post(url, {"login": colleague.email, "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert _signed_in_to_admin(bystander)


@pytest.mark.django_db
def test_behind_a_trusted_proxy_the_forwarded_client_address_is_what_is_limited(rate_limits, settings):
    # given one proxy in front, so every request comes from its address
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 1
    victim = UserFactory(email="ops@example.com", is_staff=True)
    colleague = UserFactory(email="colleague@example.com", is_staff=True)
    proxy = Client(REMOTE_ADDR="10.0.0.2")
    url = _login_page(proxy)

    # when one client behind it brute-forces
    statuses = _hammer(proxy, url, victim.email, x_forwarded_for=ATTACKER)

    # then that client is throttled, and another client behind the same proxy still signs in
    assert statuses[-1] == 429
    response = proxy.post(
        url, {"login": colleague.email, "password": PASSWORD}, headers={"x-forwarded-for": BYSTANDER}
    )
    assert response.status_code == 302 and response["Location"] == "/admin/"


@pytest.mark.django_db
def test_without_a_trusted_proxy_a_forged_forwarded_header_does_not_escape_the_limit(rate_limits):
    # given no proxy configured, an attacker who sends a new X-Forwarded-For on every try
    victim = UserFactory(email="ops@example.com", is_staff=True)
    attacker = Client(REMOTE_ADDR=ATTACKER)
    url = _login_page(attacker)

    # when it tries 40 passwords
    statuses = [
        attacker.post(
            url, {"login": victim.email, "password": "wrong"}, headers={"x-forwarded-for": f"192.0.2.{n}"}
        ).status_code
        for n in range(40)
    ]

    # then its own address is what counts: throttled
    assert statuses[-1] == 429
