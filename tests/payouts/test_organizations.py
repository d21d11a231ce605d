"""An organization's frozen balance (earned by keys it owns): only its owners convert and withdraw it."""

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import Membership, Organization
from billing.models import Account, LedgerEntry
from core.money import parse_usd
from core.models import IdempotencyRecord
from payouts.models import Conversion, Withdrawal
from payouts.services import (
    PAYOUT_NOT_ORG_OWNER,
    PayoutError,
    conversion_create,
    withdrawal_reject,
    withdrawal_request,
)
from tests.accounts.factories import UserFactory
from tests.conftest import signed_in_client
from tests.payouts.factories import (
    ADDRESSES,
    frozen_balance,
    fund_frozen,
    main_balance,
    platform_balance,
    processor,
)

pytestmark = pytest.mark.django_db

CONVERSIONS = "/api/v1/payouts/conversions"
WITHDRAWALS = "/api/v1/payouts/withdrawals"
UNKNOWN_ORG = "Unknown organization: you are not a member of 'acme'."


@pytest.fixture
def org(user):
    organization = Organization.objects.create(name="Acme", slug="acme")
    Membership.objects.create(organization=organization, user=user, role=Membership.Role.OWNER)
    return organization


@pytest.fixture
def plain_member(org):
    member = UserFactory()
    Membership.objects.create(organization=org, user=member, role=Membership.Role.MEMBER)
    return member


def _client(user) -> APIClient:
    return signed_in_client(user)


def _withdraw(client, **fields):
    body = {"amount": "10.00", "network": "USDT-TRC20", "address": ADDRESSES["USDT-TRC20"], **fields}
    return client.post(WITHDRAWALS, body, format="json")


def test_an_owner_converts_the_organizations_frozen_balance(authed_client, user, org):
    # given $5 frozen for the organization and $1 for the owner personally
    fund_frozen(org, "5.00")
    fund_frozen(user, "1.00")
    own_main_before = main_balance(user)

    # when the owner converts $2 of the organization's
    response = authed_client.post(CONVERSIONS, {"amount": "2.00", "organization": "acme"}, format="json")

    # then the organization's frozen → the organization's main, the owner's own balances untouched
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["organization"] == "acme"
    assert body["balance"] == {"main": "2.00", "frozen": "3.00"}
    assert frozen_balance(org) == parse_usd("3.00")
    assert main_balance(org) == parse_usd("2.00")
    assert frozen_balance(user) == parse_usd("1.00")
    assert main_balance(user) == own_main_before
    conversion = Conversion.objects.get(pk=body["id"])
    assert (conversion.user, conversion.organization) == (user, org)
    legs = set(
        LedgerEntry.objects.filter(transaction=conversion.ledger_transaction).values_list(
            "account__organization", "account__kind", "amount"
        )
    )
    assert legs == {(org.pk, Account.Kind.FROZEN, -parse_usd("2")), (org.pk, Account.Kind.MAIN, parse_usd("2"))}
    call_command("ledger_check")


def test_an_owner_withdraws_the_organizations_frozen_balance_and_a_rejection_returns_it(
    authed_client, user, org
):
    fund_frozen(org, "25.00")
    payable_before = platform_balance(Account.Kind.WITHDRAWALS_PAYABLE)

    response = _withdraw(authed_client, amount="12.50", organization="acme")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["organization"] == "acme"
    assert body["balance"]["frozen"] == "12.50"
    assert frozen_balance(org) == parse_usd("12.50")
    assert frozen_balance(user) == 0
    assert platform_balance(Account.Kind.WITHDRAWALS_PAYABLE) - payable_before == parse_usd("12.50")
    withdrawal = Withdrawal.objects.get(pk=body["id"])
    assert (withdrawal.user, withdrawal.organization) == (user, org)
    assert list(withdrawal.events.values_list("to_state", "actor")) == [("pending", user.pk)]

    # the organization's history lists it; the owner's own does not, and the detail is the owner's to read
    assert [row["id"] for row in authed_client.get(WITHDRAWALS, {"organization": "acme"}).json()["results"]] == [
        withdrawal.pk
    ]
    assert authed_client.get(WITHDRAWALS).json()["count"] == 0
    assert authed_client.get(f"{WITHDRAWALS}/{withdrawal.pk}").status_code == 200

    # when support rejects it, the hold goes back to the organization's frozen balance
    withdrawal_reject(withdrawal_id=withdrawal.pk, actor=processor(), note="Address on a sanctions list")
    assert frozen_balance(org) == parse_usd("25.00")
    assert frozen_balance(user) == 0
    assert platform_balance(Account.Kind.WITHDRAWALS_PAYABLE) == payable_before
    call_command("ledger_check")


def test_a_plain_member_is_refused_with_403_and_nothing_moves(org, plain_member):
    fund_frozen(org, "25.00")
    client = _client(plain_member)

    conversion = client.post(CONVERSIONS, {"amount": "1.00", "organization": "acme"}, format="json")
    withdrawal = _withdraw(client, organization="acme")
    history = client.get(CONVERSIONS, {"organization": "acme"})

    for response in (conversion, withdrawal, history):
        assert response.status_code == 403, response.content
        assert response.json() == {"detail": PAYOUT_NOT_ORG_OWNER, "code": "permission_denied"}
    assert frozen_balance(org) == parse_usd("25.00")
    assert not Conversion.objects.exists()
    assert not Withdrawal.objects.exists()


def test_the_services_refuse_a_plain_member(org, plain_member):
    fund_frozen(org, "25.00")
    with pytest.raises(PayoutError, match="owner required"):
        conversion_create(owner=org, actor=plain_member, amount=parse_usd("1"))
    with pytest.raises(PayoutError, match="owner required"):
        withdrawal_request(
            owner=org, actor=plain_member, amount=parse_usd("10"), network="BTC", address=ADDRESSES["BTC"]
        )
    assert frozen_balance(org) == parse_usd("25.00")


def test_a_non_member_cannot_tell_the_organization_exists(org):
    fund_frozen(org, "25.00")
    client = _client(UserFactory())

    existing = client.post(CONVERSIONS, {"amount": "1.00", "organization": "acme"}, format="json")
    Organization.objects.filter(pk=org.pk).update(slug="renamed")
    missing = client.post(CONVERSIONS, {"amount": "1.00", "organization": "acme"}, format="json")
    Organization.objects.filter(pk=org.pk).update(slug="acme")

    assert existing.status_code == missing.status_code == 400
    refusal = {"detail": UNKNOWN_ORG, "code": "unknown_organization"}
    assert existing.json() == missing.json() == refusal
    assert _withdraw(client, organization="acme").json() == refusal
    assert client.get(WITHDRAWALS, {"organization": "acme"}).json() == refusal
    assert frozen_balance(org) == parse_usd("25.00")


def test_a_non_owner_cannot_read_an_organizations_withdrawal(user, org, plain_member):
    fund_frozen(org, "10.00")
    withdrawal = withdrawal_request(
        owner=org, actor=user, amount=parse_usd("10"), network="BTC", address=ADDRESSES["BTC"]
    )
    assert _client(plain_member).get(f"{WITHDRAWALS}/{withdrawal.pk}").status_code == 404
    assert _client(UserFactory()).get(f"{WITHDRAWALS}/{withdrawal.pk}").status_code == 404


def test_the_minimum_and_the_balance_still_hold_for_an_organization(authed_client, org):
    fund_frozen(org, "1.00")
    below = authed_client.post(CONVERSIONS, {"amount": "0.05", "organization": "acme"}, format="json")
    above = authed_client.post(CONVERSIONS, {"amount": "1.01", "organization": "acme"}, format="json")
    assert below.status_code == above.status_code == 400
    assert "minimum" in below.json()["detail"]
    assert above.json() == {
        "detail": "You can convert at most your frozen balance, $1.00.",
        "code": "insufficient_balance",
    }
    assert frozen_balance(org) == parse_usd("1.00")


def test_an_idempotency_key_replays_an_organization_conversion(authed_client, org):
    fund_frozen(org, "1.00")
    body = {"amount": "0.40", "organization": "acme"}

    first = authed_client.post(CONVERSIONS, body, format="json", HTTP_IDEMPOTENCY_KEY="org-k1")
    replay = authed_client.post(CONVERSIONS, body, format="json", HTTP_IDEMPOTENCY_KEY="org-k1")
    # the same key for the member's own balance is another request
    mine = authed_client.post(CONVERSIONS, {"amount": "0.40"}, format="json", HTTP_IDEMPOTENCY_KEY="org-k1")

    assert first.status_code == replay.status_code == 201
    assert replay.json() == first.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert mine.status_code == 422
    assert Conversion.objects.count() == 1
    assert IdempotencyRecord.objects.count() == 1
    assert frozen_balance(org) == parse_usd("0.60")


class TestDashboardPage:
    PAGE = "/dashboard/exchange/"

    def _browser(self, user):
        return signed_in_client(user)  # the dashboard's session, signed in just now (withdrawing needs it)

    def test_an_owner_sees_and_moves_the_organizations_balance(self, user, org):
        fund_frozen(org, "30.00")
        fund_frozen(user, "1.00")
        browser = self._browser(user)

        page = browser.get(self.PAGE, {"organization": "acme"}).content.decode()
        assert 'data-testid="frozen-balance">$30.00<' in page
        assert 'action="/dashboard/exchange/convert/?organization=acme"' in page
        assert '?organization=acme">Acme</a>' in browser.get(self.PAGE).content.decode()

        converted = browser.post(f"{self.PAGE}convert/?organization=acme", {"amount": "5.00"})
        withdrawn = browser.post(
            f"{self.PAGE}withdraw/?organization=acme",
            {"amount": "10.00", "network": "BTC", "address": ADDRESSES["BTC"]},
        )

        assert converted.status_code == withdrawn.status_code == 302
        assert converted["Location"] == "/dashboard/exchange/?organization=acme"
        assert frozen_balance(org) == parse_usd("15.00")
        assert main_balance(org) == parse_usd("5.00")
        assert frozen_balance(user) == parse_usd("1.00")
        assert Withdrawal.objects.get().organization == org
        call_command("ledger_check")

    def test_a_plain_member_and_a_stranger_get_404(self, org, plain_member):
        fund_frozen(org, "30.00")
        for someone in (plain_member, UserFactory()):
            browser = self._browser(someone)
            assert browser.get(self.PAGE, {"organization": "acme"}).status_code == 404
            assert browser.post(f"{self.PAGE}convert/?organization=acme", {"amount": "5.00"}).status_code == 404
        assert frozen_balance(org) == parse_usd("30.00")
