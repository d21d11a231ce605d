import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from accounts.models import Organization
from billing.models import Account, LedgerEntry, LedgerTransaction
from core.money import parse_usd
from billing.selectors import balances_for_owner, ledger_violations
from billing.services import (
    InsufficientFunds,
    LedgerError,
    account_for_owner,
    ledger_post,
    ledger_transfer,
    platform_account,
)

pytestmark = pytest.mark.django_db


def test_new_user_has_two_dollars(user):
    assert balances_for_owner(owner=user).main == parse_usd("2.00")
    assert ledger_violations() == []


def test_transfer_moves_money_and_balances_sum_to_zero(user):
    # given a member with the signup credit
    main = account_for_owner(owner=user, kind=Account.Kind.MAIN)
    revenue = platform_account(Account.Kind.REVENUE)
    # when they pay 0.5
    ledger_transfer(source=main, destination=revenue, amount=parse_usd("0.5"), idempotency_key="t1", kind="usage")
    # then
    main.refresh_from_db()
    revenue.refresh_from_db()
    assert main.balance == parse_usd("1.5")
    assert revenue.balance == parse_usd("0.5")
    assert sum(Account.objects.values_list("balance", flat=True)) == 0


def test_same_idempotency_key_moves_money_once(user):
    main = account_for_owner(owner=user, kind=Account.Kind.MAIN)
    revenue = platform_account(Account.Kind.REVENUE)
    first = ledger_transfer(source=main, destination=revenue, amount=100, idempotency_key="settle:abc", kind="usage")
    again = ledger_transfer(source=main, destination=revenue, amount=999, idempotency_key="settle:abc", kind="usage")
    assert again.pk == first.pk
    assert LedgerEntry.objects.filter(transaction=first).count() == 2
    main.refresh_from_db()
    assert main.balance == parse_usd("2") - 100


def test_overdraft_is_refused_and_writes_nothing(user):
    main = account_for_owner(owner=user, kind=Account.Kind.MAIN)
    revenue = platform_account(Account.Kind.REVENUE)
    before = LedgerTransaction.objects.count()
    with pytest.raises(InsufficientFunds, match="Insufficient funds in main balance"):
        ledger_transfer(source=main, destination=revenue, amount=parse_usd("2.01"), idempotency_key="x", kind="usage")
    assert LedgerTransaction.objects.count() == before
    main.refresh_from_db()
    assert main.balance == parse_usd("2")


@pytest.mark.parametrize(
    ("legs", "message"),
    [
        ([("main", -5)], "at least two"),
        ([("main", -5), ("revenue", 4)], "sum to zero"),
        ([("main", 0), ("revenue", 0)], "cannot be zero"),
        ([("main", -1.0), ("revenue", 1.0)], "integer nanodollars"),
    ],
)
def test_malformed_transactions_are_refused(user, legs, message):
    accounts = {"main": account_for_owner(owner=user, kind="main"), "revenue": platform_account("revenue")}
    with pytest.raises(LedgerError, match=message):
        ledger_post(legs=[(accounts[a], n) for a, n in legs], idempotency_key="bad", kind="adjustment")


def test_transaction_without_idempotency_key_is_refused(user):
    with pytest.raises(LedgerError, match="idempotency key"):
        ledger_transfer(
            source=account_for_owner(owner=user, kind="main"),
            destination=platform_account("revenue"),
            amount=1,
            idempotency_key="",
            kind="usage",
        )


def test_entries_are_append_only(user):
    entry = LedgerEntry.objects.first()
    entry.amount = 1
    with pytest.raises(ValueError, match="append-only"):
        entry.save()
    with pytest.raises(ValueError, match="append-only"):
        entry.delete()


def test_organization_accounts_are_separate(user):
    org = Organization.objects.create(name="Acme", slug="acme")
    org_main = account_for_owner(owner=org, kind=Account.Kind.MAIN)
    ledger_transfer(
        source=platform_account(Account.Kind.ADJUSTMENTS), destination=org_main, amount=7, idempotency_key="o", kind="adjustment"
    )
    assert balances_for_owner(owner=org).main == 7
    assert balances_for_owner(owner=user).main == parse_usd("2")


def test_ledger_check_passes_on_a_sound_ledger(user, capsys):
    call_command("ledger_check")
    assert "ledger OK" in capsys.readouterr().out


@pytest.mark.ledger_broken
def test_ledger_check_names_a_drifted_balance(user):
    # given a cached balance changed behind the ledger's back
    Account.objects.filter(user=user, kind="main").update(balance=1)
    # then ledger_check fails and says which account
    with pytest.raises(CommandError, match="1 ledger violation"):
        call_command("ledger_check")
    assert any("caches 1 but its entries sum to 2000000000" in p for p in ledger_violations())


@pytest.mark.ledger_broken
def test_ledger_check_names_an_unbalanced_transaction(user):
    # given a single leg written around the service; its trigger
    # would refuse this (tested in test_ledger_concurrency), so it is switched
    # off inside this test's transaction, which rolls back
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # fire what is pending first
        cursor.execute("ALTER TABLE billing_ledgerentry DISABLE TRIGGER billing_ledgerentry_balanced")
    txn = LedgerTransaction.objects.create(idempotency_key="rogue", kind="adjustment")
    LedgerEntry.objects.create(transaction=txn, account=account_for_owner(owner=user, kind="main"), amount=5)
    problems = ledger_violations()
    assert any("(rogue) has 1 entries summing to 5" in p for p in problems)
    assert any("all entries sum to 5" in p for p in problems)
