"""Pages that show balances: the dashboard's cards (billing's context processor) and the organizations page."""

import pytest

from accounts.services import organization_create, user_create

pytestmark = pytest.mark.django_db


def test_the_dashboard_shows_the_new_members_signup_credit(client):
    # given a member just created with a vouched-for address, so granted the signup credit
    member = user_create(email="new@example.com", password="x-long-password-1", verified=True)
    client.force_login(member)
    # when they open the dashboard
    page = client.get("/dashboard/").content.decode()
    # then the balance cards show it
    assert 'data-testid="main-balance">$2.00<' in page
    assert 'data-testid="frozen-balance">$0.00<' in page


def test_the_organizations_page_lists_each_organization_with_its_balance(client):
    member = user_create(email="owner@example.com", password="x-long-password-1")
    client.force_login(member)
    response = client.post("/dashboard/organizations/", {"name": "Acme"})
    assert response.status_code == 302
    page = client.get("/dashboard/organizations/").content.decode()
    assert "<td>Acme</td><td>Owner</td><td>1</td><td>$0.00</td>" in page
    organization_create(owner=member, name="Beta")
    assert "<td>Beta</td>" in client.get("/dashboard/organizations/").content.decode()


def test_anonymous_pages_get_no_balances(client):
    assert client.get("/").context.get("balances") is None
