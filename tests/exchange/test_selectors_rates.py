"""The payout-rate resolver: six levels, most specific first, 0% as "disabled", global 0% as the off switch."""

from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction

from exchange.models import PayoutRateRule
from exchange.selectors import (
    ResolvedRate,
    exchange_open_at,
    exchange_open_sql,
    exchange_routing_enabled,
    payout_rate_explain,
    payout_rate_resolve,
    payout_rate_table,
)
from tests.accounts.factories import UserFactory
from tests.exchange.factories import exchange_provider, rule

pytestmark = pytest.mark.django_db

# Most specific first, with the seed document's example rates.
LEVELS = [
    ("user+provider+task", "75.00"),
    ("user+provider", "80.00"),
    ("user", "85.00"),
    ("provider+task", "95.00"),
    ("provider", "92.00"),
    ("global", "90.00"),
]


@pytest.fixture
def world():
    """A member, a provider and the task being asked about, plus rules that must never apply to them."""
    member, stranger = UserFactory(), UserFactory()
    provider, other_provider = exchange_provider("deepseek"), exchange_provider("moonshot")
    # noise: another member's rules, another provider's, another task's
    rule("1.00", user=stranger)
    rule("1.00", user=stranger, provider=provider)
    rule("1.00", user=stranger, provider=provider, task="chat")
    rule("2.00", provider=other_provider)
    rule("2.00", provider=other_provider, task="chat")
    rule("2.00", user=member, provider=other_provider)
    rule("3.00", user=member, provider=provider, task="embeddings")
    rule("3.00", provider=provider, task="embeddings")
    return member, provider


def _create_level(level: str, percent: str, member, provider) -> PayoutRateRule:
    scope = {
        "user+provider+task": {"user": member, "provider": provider, "task": "chat"},
        "user+provider": {"user": member, "provider": provider},
        "user": {"user": member},
        "provider+task": {"provider": provider, "task": "chat"},
        "provider": {"provider": provider},
        "global": {},
    }[level]
    return rule(percent, **scope)


@pytest.mark.parametrize("winner", range(len(LEVELS)), ids=[name for name, _ in LEVELS])
def test_the_most_specific_rule_present_wins(world, winner):
    # given rules at the winning level and every less specific one
    member, provider = world
    created = {name: _create_level(name, percent, member, provider) for name, percent in LEVELS[winner:]}
    name, percent = LEVELS[winner]

    # when the rate for (member, provider, chat) is resolved
    resolved = payout_rate_resolve(user=member, provider=provider, task="chat")

    # then the winning level decides, and says which rule it was
    assert resolved == ResolvedRate(percent=Decimal(percent), rule_id=created[name].pk, scope=name)


@pytest.mark.parametrize("zero_at", range(len(LEVELS)), ids=[name for name, _ in LEVELS])
def test_a_zero_rule_at_the_winning_level_disables(world, zero_at):
    # given a 0% rule at one level and non-zero rules at every less specific level
    member, provider = world
    zero = _create_level(LEVELS[zero_at][0], "0", member, provider)
    for name, percent in LEVELS[zero_at + 1 :]:
        _create_level(name, percent, member, provider)

    resolved = payout_rate_resolve(user=member, provider=provider, task="chat")

    assert resolved == ResolvedRate(percent=Decimal("0"), rule_id=zero.pk, scope=LEVELS[zero_at][0])
    assert resolved.disabled


@pytest.mark.parametrize("zero_at", range(1, len(LEVELS) - 1), ids=[name for name, _ in LEVELS[1:-1]])
def test_a_zero_rule_below_a_more_specific_rule_does_not_apply(world, zero_at):
    # given 0% at one level (not global) and a non-zero rule one level more specific
    member, provider = world
    _create_level(LEVELS[zero_at][0], "0", member, provider)
    name, percent = LEVELS[zero_at - 1]
    winner = _create_level(name, percent, member, provider)

    resolved = payout_rate_resolve(user=member, provider=provider, task="chat")

    assert resolved == ResolvedRate(percent=Decimal(percent), rule_id=winner.pk, scope=name)


def test_global_zero_overrides_every_user_and_provider_rule(world):
    # given user overrides at every level, and the global rate at 0%
    member, provider = world
    for name, percent in LEVELS[:-1]:
        _create_level(name, percent, member, provider)
    switch = rule("0")

    # then every member, provider and task resolves to 0%, because of the global rule
    for who in (member, UserFactory(), None):
        for task in ("chat", "embeddings", ""):
            resolved = payout_rate_resolve(user=who, provider=provider, task=task)
            assert resolved == ResolvedRate(percent=Decimal("0"), rule_id=switch.pk, scope="global")
    # and exchange keys leave routing altogether
    assert exchange_routing_enabled() is False


def test_without_any_rule_the_settings_default_applies(settings):
    settings.HEADROOM_DEFAULT_PAYOUT_RATE = "87.5"
    member, provider = UserFactory(), exchange_provider("deepseek")
    assert payout_rate_resolve(user=member, provider=provider, task="chat") == ResolvedRate(
        percent=Decimal("87.50"), rule_id=None, scope="global"
    )
    assert exchange_routing_enabled() is True
    settings.HEADROOM_DEFAULT_PAYOUT_RATE = "0"
    assert payout_rate_resolve(user=member, provider=provider, task="chat").percent == 0
    assert exchange_routing_enabled() is False


@pytest.mark.parametrize(("global_percent", "enabled"), [("0", False), ("0.01", True), ("100", True)])
def test_routing_follows_the_global_rule(global_percent, enabled):
    rule(global_percent)
    assert exchange_routing_enabled() is enabled


def test_provider_level_skips_task_rules(world):
    member, provider = world
    rule("0", user=member, provider=provider, task="chat")
    provider_rule = rule("92", provider=provider)
    assert payout_rate_resolve(user=member, provider=provider, task="") == ResolvedRate(
        percent=Decimal("92.00"), rule_id=provider_rule.pk, scope="provider"
    )


def test_an_organization_owned_key_skips_user_rules(world):
    member, provider = world
    rule("10", user=member)
    provider_rule = rule("92", provider=provider)
    assert payout_rate_resolve(user=None, provider=provider, task="chat").rule_id == provider_rule.pk


@pytest.mark.design
def test_resolving_is_one_query(world, django_assert_num_queries):
    """Why it exists: the gateway resolves a payout rate for every exchange request it settles; walking
    the six scopes one query each would multiply that cost (bench/README.md)."""
    member, provider = world
    for name, percent in LEVELS:
        _create_level(name, percent, member, provider)
    with django_assert_num_queries(1):
        payout_rate_resolve(user=member, provider=provider, task="chat")
    with django_assert_num_queries(1):
        exchange_routing_enabled()


def test_the_explanation_lists_every_level(world):
    member, provider = world
    user_rule = rule("85", user=member)
    rule("92", provider=provider)
    explanation = payout_rate_explain(user=member, provider=provider, task="chat")
    assert [c.scope for c in explanation.candidates] == [name for name, _ in LEVELS]
    assert {c.scope: c.percent for c in explanation.candidates if c.rule_id} == {
        "user": Decimal("85.00"),
        "provider": Decimal("92.00"),
    }
    assert explanation.resolved.rule_id == user_rule.pk
    assert explanation.global_switch_off is False


def test_the_table_resolves_every_provider_and_task_in_one_query(world, django_assert_num_queries):
    member, provider = world
    rule("0", provider=provider, task="chat")
    other = exchange_provider("moonshot")
    with django_assert_num_queries(1):
        table = payout_rate_table(user=member, providers=[provider, other])
    by_slug = {row.provider.slug: row for row in table}
    assert dict((task, r.percent) for task, r in by_slug["deepseek"].tasks) == {
        "chat": Decimal("0"),  # provider+task
        "embeddings": Decimal("3.00"),  # the member's user+provider+task rule
    }
    assert by_slug["deepseek"].rate.percent == Decimal("90.00")  # the default: no provider-level rule
    assert by_slug["moonshot"].rate.percent == Decimal("2.00")  # the member's user+provider rule


class TestRuleConstraints:
    @pytest.mark.parametrize(
        "scope",
        [{}, {"provider": "p"}, {"provider": "p", "task": "chat"}, {"user": "u"}, {"user": "u", "provider": "p"},
         {"user": "u", "provider": "p", "task": "chat"}],
        ids=["global", "provider", "provider+task", "user", "user+provider", "user+provider+task"],
    )
    def test_one_rule_per_scope(self, scope):
        values = {"u": UserFactory(), "p": exchange_provider("deepseek")}
        fields = {key: values.get(value, value) for key, value in scope.items()}
        rule("50", **fields)
        with pytest.raises(IntegrityError), transaction.atomic():
            rule("60", **fields)

    def test_a_task_needs_a_provider(self):
        with pytest.raises(IntegrityError), transaction.atomic():
            rule("50", user=UserFactory(), task="chat")

    @pytest.mark.parametrize("percent", ["-0.01", "100.01"])
    def test_percent_is_within_0_and_100(self, percent):
        with pytest.raises(IntegrityError), transaction.atomic():
            rule(percent)


@pytest.mark.parametrize("default", ["90.00", "0"])
@pytest.mark.parametrize("percent", [None, "0", "0.00", "0.01", "90", "100"])
def test_the_gateways_sql_opens_the_exchange_exactly_when_exchange_open_at_does(settings, percent, default):
    # the plan's SQL twin of the one rule "global 0% stops routing to exchange keys"
    settings.HEADROOM_DEFAULT_PAYOUT_RATE = default
    value = None if percent is None else Decimal(percent)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {exchange_open_sql('v.p', 'v.d')} FROM (SELECT %s::numeric AS p, %s AS d) v",
                       [value, exchange_open_at(None)])
        assert cursor.fetchone()[0] is exchange_open_at(value)
