"""Exchange earnings: the settled cost times the resolved rate, into frozen balance, exactly once, snapshotted."""

from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import transaction

from accounts.services import organization_create
from billing.models import Account, LedgerTransaction
from billing.money import parse_usd
from billing.selectors import balances_for_owner
from exchange.models import ExchangeEarning
from exchange.selectors import ResolvedRate, payout_rate_resolve
from exchange.services import ExchangeError, exchange_earning_credit
from tests.accounts.factories import UserFactory
from tests.concurrency import run_concurrently
from tests.exchange.factories import exchange_provider, rule
from tests.keys.factories import key_in_state

pytestmark = pytest.mark.django_db


@pytest.fixture
def key():
    return key_in_state("active", provider=exchange_provider("deepseek"), exchange=True)


def _credit(key, request_id: str, cost: str, rate: ResolvedRate | None = None):
    rate = rate or payout_rate_resolve(user=key.owner_user, provider=key.provider, task="chat")
    with transaction.atomic():  # the gateway's settlement transaction
        return exchange_earning_credit(
            key_owner=key.owner, provider_key_id=key.pk, request_id=request_id, settled_cost=parse_usd(cost), rate=rate
        )


def test_the_seed_example_two_tenths_of_a_cent_at_90_percent(key):
    # given the global rate at 90% and a request that settled at $0.0020
    global_rule = rule("90")

    # when the earning is credited
    txn = _credit(key, "req-1", "0.0020")

    # then $0.0018 lands in frozen balance, from the exchange-payouts account
    assert txn.kind == LedgerTransaction.Kind.EXCHANGE_EARNING
    assert txn.idempotency_key == "exchange-earning:req-1"
    assert balances_for_owner(owner=key.owner_user).frozen == parse_usd("0.0018")
    assert sorted(txn.entries.values_list("account__kind", "amount")) == [
        (Account.Kind.EXCHANGE_PAYOUTS, -parse_usd("0.0018")),
        (Account.Kind.FROZEN, parse_usd("0.0018")),
    ]
    earning = ExchangeEarning.objects.get(request_id="req-1")
    assert (earning.provider_key_id, earning.settled_cost, earning.amount) == (
        key.pk,
        parse_usd("0.0020"),
        parse_usd("0.0018"),
    )
    assert (earning.rate_percent, earning.rate_rule_id, earning.rate_scope) == (Decimal("90"), global_rule.pk, "global")


def test_rounding_is_half_even_to_the_nanodollar(key):
    rule("50")
    _credit(key, "odd", "0.000000003")  # 1.5 nanodollars → 2
    _credit(key, "odd-2", "0.000000005")  # 2.5 nanodollars → 2
    assert list(ExchangeEarning.objects.order_by("pk").values_list("amount", flat=True)) == [2, 2]


def test_a_replay_credits_exactly_once(key):
    rule("90")
    first = _credit(key, "req-2", "1.00")
    # a retry, even one carrying other figures, moves nothing more
    again = _credit(key, "req-2", "5.00", ResolvedRate(percent=Decimal("100"), rule_id=None, scope="global"))
    assert again.pk == first.pk
    assert ExchangeEarning.objects.filter(request_id="req-2").count() == 1
    assert balances_for_owner(owner=key.owner_user).frozen == parse_usd("0.90")


def test_zero_percent_earns_nothing(key):
    rule("0", user=key.owner_user, provider=key.provider, task="chat")
    assert _credit(key, "req-3", "1.00") is None
    assert balances_for_owner(owner=key.owner_user).frozen == 0
    assert not LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.EXCHANGE_EARNING).exists()
    earning = ExchangeEarning.objects.get(request_id="req-3")
    assert (earning.amount, earning.rate_percent, earning.rate_scope) == (0, Decimal("0"), "user+provider+task")


def test_a_later_rule_change_does_not_rewrite_history(key):
    # given an earning at the provider's 92%
    provider_rule = rule("92", provider=key.provider)
    _credit(key, "before", "1.00")

    # when the rule drops to 50% and another request settles
    provider_rule.percent = Decimal("50")
    provider_rule.save()
    _credit(key, "after", "1.00")

    # then the first earning keeps its rate and amount; only the new one uses 50%
    rows = dict(ExchangeEarning.objects.values_list("request_id", "rate_percent"))
    assert rows == {"before": Decimal("92.00"), "after": Decimal("50.00")}
    assert balances_for_owner(owner=key.owner_user).frozen == parse_usd("0.92") + parse_usd("0.50")
    # and deleting the rule leaves the snapshot intact
    provider_rule.delete()
    assert ExchangeEarning.objects.get(request_id="before").rate_rule_id is not None


def test_an_organization_key_earns_into_the_organizations_frozen_balance():
    owner = UserFactory()
    org = organization_create(owner=owner, name="Acme")
    from keys.models import ProviderKey

    key = key_in_state("active", provider=exchange_provider("deepseek"), exchange=True)
    ProviderKey.objects.filter(pk=key.pk).update(owner_user=None, owner_org=org)
    key.refresh_from_db()
    _credit(key, "org-req", "1.00")
    assert balances_for_owner(owner=org).frozen == parse_usd("0.90")
    assert balances_for_owner(owner=owner).frozen == 0


@pytest.mark.parametrize(
    ("request_id", "cost", "percent", "message"),
    [
        ("", 1, "90", "request id"),
        ("r", -1, "90", "cannot be negative"),
        ("r", 1, "100.01", "from 0 to 100"),
        ("r", 1, "-1", "from 0 to 100"),
    ],
)
def test_bad_input_is_refused(key, request_id, cost, percent, message):
    with pytest.raises(ExchangeError, match=message):
        exchange_earning_credit(
            key_owner=key.owner,
            provider_key_id=key.pk,
            request_id=request_id,
            settled_cost=cost,
            rate=ResolvedRate(percent=Decimal(percent), rule_id=None, scope="global"),
        )


def test_ledger_check_is_clean_after_earnings(key):
    rule("90")
    for n in range(5):
        _credit(key, f"req-{n}", "0.123456789")
    rule("0", user=key.owner_user)
    _credit(key, "zero", "1.00")
    call_command("ledger_check")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_replay_raced_from_many_workers_credits_once():
    key = key_in_state("active", provider=exchange_provider("deepseek"), exchange=True)
    rate = ResolvedRate(percent=Decimal("90"), rule_id=None, scope="global")

    def credit(_):
        with transaction.atomic():
            return exchange_earning_credit(
                key_owner=key.owner, provider_key_id=key.pk, request_id="raced", settled_cost=10**9, rate=rate
            ).pk

    results = run_concurrently(10, credit)
    assert len(set(results)) == 1
    assert ExchangeEarning.objects.filter(request_id="raced").count() == 1
    assert balances_for_owner(owner=key.owner_user).frozen == parse_usd("0.90")
    call_command("ledger_check")
