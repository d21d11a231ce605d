"""Property test: any sequence of transfers keeps every ledger invariant.

Hypothesis generates sequences of transfers between owner and platform
accounts, including overdrafts (which must be refused whole) and replayed
idempotency keys (which must move nothing). A failing case is printed with a
reproduction blob (`@reproduce_failure`); under CI=true examples are
derandomized, so a re-run fails the same way.
"""

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from billing.models import Account
from billing.selectors import ledger_violations
from billing.services import (
    InsufficientFunds,
    account_for_owner,
    ledger_transfer,
    platform_account,
)
from tests.accounts.factories import UserFactory

ACCOUNT_NAMES = ["alice.main", "alice.frozen", "bob.main", "bob.frozen", "revenue", "pool_rewards"]

transfer = st.tuples(
    st.sampled_from(ACCOUNT_NAMES),
    st.sampled_from(ACCOUNT_NAMES),
    st.integers(min_value=1, max_value=3_000_000_000),
    st.integers(min_value=0, max_value=15),  # idempotency key id: small range, so replays happen
)


class LedgerPropertyTests(TestCase):
    @given(st.lists(transfer, min_size=1, max_size=25))
    def test_random_transfers_keep_every_invariant(self, transfers):
        alice, bob = UserFactory(), UserFactory()
        accounts = {
            "alice.main": account_for_owner(owner=alice, kind=Account.Kind.MAIN),
            "alice.frozen": account_for_owner(owner=alice, kind=Account.Kind.FROZEN),
            "bob.main": account_for_owner(owner=bob, kind=Account.Kind.MAIN),
            "bob.frozen": account_for_owner(owner=bob, kind=Account.Kind.FROZEN),
            "revenue": platform_account(Account.Kind.REVENUE),
            "pool_rewards": platform_account(Account.Kind.POOL_REWARDS),
        }
        # A model of what the balances must be, kept in plain Python.
        expected = {name: account.balance for name, account in accounts.items()}
        used_keys: set[int] = set()

        for source, destination, amount, key_id in transfers:
            if source == destination:
                continue
            key = f"prop:{alice.pk}:{key_id}"
            replay = key_id in used_keys
            overdraft = not accounts[source].may_go_negative and expected[source] < amount
            try:
                ledger_transfer(
                    source=accounts[source],
                    destination=accounts[destination],
                    amount=amount,
                    idempotency_key=key,
                    kind="transfer",
                )
            except InsufficientFunds:
                assert overdraft and not replay
                continue
            assert replay or not overdraft
            if not replay:
                used_keys.add(key_id)
                expected[source] -= amount
                expected[destination] += amount

        for name, account in accounts.items():
            account.refresh_from_db()
            assert account.balance == expected[name], name
            if not account.may_go_negative:
                assert account.balance >= 0
        assert ledger_violations() == []
