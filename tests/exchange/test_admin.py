"""The rules admin: validation, the precedence preview, and the global rate page with its confirmation."""

from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client

from exchange.models import PayoutRateRule
from exchange.selectors import exchange_routing_enabled, global_payout_rate
from tests.accounts.factories import UserFactory
from tests.exchange.factories import exchange_provider, rule

pytestmark = pytest.mark.django_db

RULES = "/admin/exchange/payoutraterule/"
GLOBAL = "/admin/exchange/globalpayoutrate/"


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


class TestRuleForm:
    def test_a_rule_is_added(self, admin_client):
        member, provider = UserFactory(), exchange_provider("deepseek")
        response = admin_client.post(
            f"{RULES}add/", {"user": member.pk, "provider": provider.pk, "task": "chat", "percent": "75", "note": ""}
        )
        assert response.status_code == 302
        assert PayoutRateRule.objects.get().scope == "user+provider+task"

    @pytest.mark.parametrize(
        ("fields", "error"),
        [
            ({"percent": "50"}, "The global rate has its own page"),
            ({"user": "u", "task": "chat", "percent": "50"}, "A task-specific rule needs a provider."),
            ({"provider": "p", "percent": "100.01"}, "less than or equal to 100"),
            ({"provider": "p", "percent": "-1"}, "greater than or equal to 0"),
            ({"provider": "p", "percent": "12.345"}, "no more than 2 decimal places"),
            ({"provider": "p", "percent": "60"}, "There is already a rule for this scope"),
        ],
    )
    def test_invalid_rules_are_refused_with_the_reason(self, admin_client, fields, error):
        member, provider = UserFactory(), exchange_provider("deepseek")
        rule("50", provider=provider)
        values = {"u": member.pk, "p": provider.pk}
        data = {"note": "", "task": "", **{k: values.get(v, v) for k, v in fields.items()}}
        response = admin_client.post(f"{RULES}add/", data)
        assert response.status_code == 200
        assert error in response.content.decode()
        assert PayoutRateRule.objects.count() == 1

    def test_the_global_rule_is_not_listed_with_the_others(self, admin_client):
        rule("90")
        rule("92", provider=exchange_provider("deepseek"))
        page = admin_client.get(RULES).content.decode()
        assert "provider deepseek" in page
        assert "1 payout rate rule" in page


class TestPreview:
    def test_it_names_the_rate_and_the_rule_that_decided(self, admin_client):
        member, provider = UserFactory(email="x@example.com"), exchange_provider("deepseek")
        rule("90")
        winner = rule("80", user=member, provider=provider)
        rule("95", provider=provider, task="chat")

        page = admin_client.get(
            f"{RULES}preview/", {"user_email": "X@example.com", "provider": provider.pk, "task": "chat"}
        ).content.decode()

        text = " ".join(page.split())
        assert (
            "For user x@example.com, provider deepseek, task chat the rate is 80.00% "
            f"because of rule #{winner.pk} (user+provider)."
        ) in text

    def test_it_explains_the_global_switch(self, admin_client):
        member, provider = UserFactory(), exchange_provider("deepseek")
        rule("99", user=member)
        rule("0")
        page = admin_client.get(
            f"{RULES}preview/", {"user_email": member.email, "provider": provider.pk, "task": ""}
        ).content.decode()
        text = " ".join(page.split())
        assert "the rate is 0.00% because the global rate is 0%: the exchange is switched off." in text

    def test_an_unknown_user_is_reported(self, admin_client):
        provider = exchange_provider("deepseek")
        page = admin_client.get(f"{RULES}preview/", {"user_email": "nobody@example.com", "provider": provider.pk})
        assert "No user with that e-mail address." in page.content.decode()

    def test_members_cannot_see_it(self):
        client = Client()
        client.force_login(UserFactory())
        assert client.get(f"{RULES}preview/").status_code == 302  # to the admin login


class TestGlobalRatePage:
    def test_it_shows_the_default_before_any_rule(self, admin_client, settings):
        settings.HEADROOM_DEFAULT_PAYOUT_RATE = "90.00"
        page = admin_client.get(GLOBAL).content.decode()
        assert "The global payout rate is <strong>90.00%</strong> (the default" in page
        assert "The exchange is <strong>on</strong>" in page

    def test_a_change_above_zero_applies_at_once_and_is_logged(self, admin_client):
        response = admin_client.post(GLOBAL, {"percent": "85.5"})
        assert response.status_code == 302
        assert global_payout_rate()[0] == Decimal("85.50")
        assert LogEntry.objects.filter(change_message__contains="→ 85.50%").exists()

    def test_switching_off_needs_a_confirmation(self, admin_client):
        rule("90")
        # when the admin asks for 0%
        first = admin_client.post(GLOBAL, {"percent": "0"})
        # then nothing changes yet: the page explains the consequence and asks to confirm
        assert first.status_code == 200
        assert "switches the exchange off" in first.content.decode()
        assert exchange_routing_enabled() is True
        # and once confirmed the exchange is off
        confirmed = admin_client.post(GLOBAL, {"percent": "0", "confirmed": "yes"})
        assert confirmed.status_code == 302
        assert exchange_routing_enabled() is False
        assert "The exchange is <strong>off</strong>" in admin_client.get(GLOBAL).content.decode()

    def test_switching_back_on_needs_a_confirmation_too(self, admin_client):
        rule("0")
        first = admin_client.post(GLOBAL, {"percent": "90"})
        assert "switches the exchange back on" in first.content.decode()
        assert exchange_routing_enabled() is False
        admin_client.post(GLOBAL, {"percent": "90", "confirmed": "yes"})
        assert exchange_routing_enabled() is True

    @pytest.mark.parametrize("percent", ["101", "-1", "1.234", "abc"])
    def test_invalid_rates_are_refused(self, admin_client, percent):
        rule("90")
        response = admin_client.post(GLOBAL, {"percent": percent, "confirmed": "yes"})
        assert response.status_code == 200
        assert global_payout_rate()[0] == Decimal("90")

    def test_staff_without_change_permission_only_see_it(self):
        from django.contrib.auth.models import Permission

        staff = UserFactory(is_staff=True)
        staff.user_permissions.add(Permission.objects.get(codename="view_globalpayoutrate"))
        client = Client()
        client.force_login(staff)
        assert client.get(GLOBAL).status_code == 200
        client.post(GLOBAL, {"percent": "0", "confirmed": "yes"})
        assert exchange_routing_enabled() is True
