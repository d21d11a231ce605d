"""The ledger under concurrent writers, on real PostgreSQL (threads, committed transactions)."""


import pytest
from django.db import IntegrityError, connection, transaction

from billing.models import Account, LedgerEntry, LedgerTransaction
from core.money import parse_usd
from billing.selectors import ledger_violations
from billing.services import (
    InsufficientFunds,
    account_for_owner,
    ledger_transfer,
    platform_account,
)
from tests.accounts.factories import UserFactory
from tests.concurrency import run_concurrently

pytestmark = pytest.mark.django_db(transaction=True)




def test_fifty_concurrent_debits_against_a_balance_for_ten():
    # given a member whose $2.00 covers exactly ten $0.20 debits
    user = UserFactory()
    main = account_for_owner(owner=user, kind=Account.Kind.MAIN)
    revenue = platform_account(Account.Kind.REVENUE)
    price = parse_usd("0.20")

    def debit(i: int) -> str:
        try:
            ledger_transfer(source=main, destination=revenue, amount=price, idempotency_key=f"debit:{i}", kind="usage")
            return "ok"
        except InsufficientFunds:
            return "refused"

    # when fifty debits race
    outcomes = run_concurrently(50, debit)

    # then exactly ten succeed, nothing is lost and nothing goes below zero
    assert outcomes.count("ok") == 10
    assert outcomes.count("refused") == 40
    main.refresh_from_db()
    assert main.balance == 0
    assert LedgerEntry.objects.filter(account=main, amount=-price).count() == 10
    assert ledger_violations() == []


def test_the_same_idempotency_key_raced_moves_money_once():
    user = UserFactory()
    main = account_for_owner(owner=user, kind=Account.Kind.MAIN)
    revenue = platform_account(Account.Kind.REVENUE)

    results = run_concurrently(
        20,
        lambda i: ledger_transfer(
            source=main, destination=revenue, amount=1_000, idempotency_key="settle:same", kind="usage"
        ).pk,
    )
    assert len(set(results)) == 1
    assert LedgerTransaction.objects.filter(idempotency_key="settle:same").count() == 1
    main.refresh_from_db()
    assert main.balance == parse_usd("2") - 1_000
    assert ledger_violations() == []


def test_signup_credit_raced_is_granted_once():
    from billing.services import signup_credit_grant

    user = UserFactory()
    run_concurrently(10, lambda i: signup_credit_grant(user=user))
    assert account_for_owner(owner=user, kind=Account.Kind.MAIN).balance == parse_usd("2")


def test_database_refuses_an_unbalanced_transaction_at_commit():
    # given entries written around the service
    user = UserFactory()
    main = account_for_owner(owner=user, kind=Account.Kind.MAIN)
    # then the deferred trigger refuses the commit
    with pytest.raises(IntegrityError, match="unbalanced"):
        with transaction.atomic():
            txn = LedgerTransaction.objects.create(idempotency_key="rogue", kind="adjustment")
            LedgerEntry.objects.create(transaction=txn, account=main, amount=5)
    assert not LedgerTransaction.objects.filter(idempotency_key="rogue").exists()


def test_database_refuses_to_change_an_entry():
    UserFactory()
    entry = LedgerEntry.objects.first()
    with pytest.raises(Exception, match="append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("UPDATE billing_ledgerentry SET amount = amount + 1 WHERE id = %s", [entry.pk])


def test_database_refuses_a_negative_member_balance():
    user = UserFactory()
    with pytest.raises(IntegrityError):
        with transaction.atomic():
            Account.objects.filter(user=user, kind=Account.Kind.MAIN).update(balance=-1)
