"""The member's Provider Exchange page: balances, rates, earnings, convert and withdraw forms, history."""

import pytest
from django.test import Client

from core.money import parse_usd
from payouts.models import Withdrawal
from tests.exchange.factories import exchange_provider, rule
from tests.payouts.factories import ADDRESSES, frozen_balance, fund_frozen

pytestmark = pytest.mark.django_db

PAGE = "/dashboard/exchange/"
PASSWORD = "correct-horse-battery-staple"  # UserFactory's


@pytest.fixture
def browser(user) -> Client:
    """The member signed in through the login form just now (withdrawing needs a recent sign-in)."""
    client = Client()
    assert client.post("/accounts/login/", {"login": user.email, "password": PASSWORD}).status_code == 302
    return client


def test_the_page_shows_balance_rates_and_the_nav_link(browser, user):
    fund_frozen(user, "12.34")
    deepseek = exchange_provider("deepseek", name="DeepSeek")
    rule("0", user=user, provider=deepseek)
    exchange_provider("moonshot", name="Moonshot")

    page = browser.get(PAGE).content.decode()

    assert 'href="/dashboard/exchange/"' in page
    assert 'data-testid="frozen-balance">$12.34<' in page
    rows = " ".join(page.split())
    assert "<td>DeepSeek</td> <td><strong>Disabled</strong></td>" in rows
    assert "<td>Moonshot</td> <td>90.00%</td>" in rows


def test_converting_from_the_page(browser, user):
    fund_frozen(user, "1.00")
    response = browser.post(f"{PAGE}convert/", {"amount": "0.40"}, follow=True)
    assert "Converted $0.40 to your main balance." in response.content.decode()
    assert frozen_balance(user) == parse_usd("0.60")


@pytest.mark.parametrize(("amount", "error"), [("0.05", "minimum conversion is $0.10"), ("x", "not a decimal")])
def test_a_refused_conversion_says_why(browser, user, amount, error):
    fund_frozen(user, "1.00")
    response = browser.post(f"{PAGE}convert/", {"amount": amount})
    assert response.status_code == 422
    assert error in response.content.decode()
    assert frozen_balance(user) == parse_usd("1.00")


def test_withdrawing_from_the_page_and_seeing_it_pending(browser, user):
    fund_frozen(user, "20.00")
    response = browser.post(
        f"{PAGE}withdraw/", {"amount": "10", "network": "USDC-SOL", "address": ADDRESSES["USDC-SOL"]}, follow=True
    )
    page = response.content.decode()
    assert "Withdrawal of $10.00 requested on USDC-SOL" in page
    assert "<td>Pending</td>" in page
    assert Withdrawal.objects.get().user == user


def test_withdrawing_from_a_session_not_signed_in_recently_asks_for_the_password_first(user):
    fund_frozen(user, "20.00")
    idle = Client()
    idle.force_login(user)  # a session that recorded no recent sign-in
    form = {"amount": "10", "network": "USDC-SOL", "address": ADDRESSES["USDC-SOL"]}
    response = idle.post(f"{PAGE}withdraw/", form)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/reauthenticate/?next=")
    assert not Withdrawal.objects.exists()
    # confirming the password, then withdrawing, goes through
    confirmed = idle.post(response["Location"], {"password": PASSWORD})
    assert confirmed.status_code == 302 and confirmed["Location"] == PAGE
    assert idle.post(f"{PAGE}withdraw/", form).status_code == 302
    assert Withdrawal.objects.count() == 1


def test_a_refused_withdrawal_says_why(browser, user):
    fund_frozen(user, "20.00")
    response = browser.post(f"{PAGE}withdraw/", {"amount": "10", "network": "BTC", "address": "bc1nope"})
    assert response.status_code == 422
    assert "That is not a valid BTC address" in response.content.decode()
    assert not Withdrawal.objects.exists()


def test_anonymous_visitors_are_sent_to_sign_in(client):
    assert client.get(PAGE).status_code == 302
