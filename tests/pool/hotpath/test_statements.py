"""The hot path's statements (pool.hotpath).

The gateway tests reach these through /v1; the cases here are the ones a provider cannot be made to
produce on demand: a charge beyond the balance, a fee the balance cannot cover, a replayed settlement.
"""

import asyncio
from datetime import datetime, timezone

import pytest

from billing.models import Account, BalanceHold, ByokMonthlyUsage
from core.money import parse_usd
from keys.models import ProviderKey
from pool.models import RequestRecord
from pool.selectors import Caller, Target
from pool.services import PickedKey, Settlement, Usage, request_settle
from pool.hotpath.dtos import Hold
from pool.hotpath.hold import hold_place
from pool.hotpath.pick import key_take
from tests.keys.factories import key_in_state
from tests.pool.helpers import SIGNUP, assert_ledger_clean, main, platform, run_on_own_loop as run

pytestmark = pytest.mark.django_db(transaction=True)
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def _platform_key() -> ProviderKey:
    key = key_in_state(ProviderKey.Status.ACTIVE)
    ProviderKey.objects.filter(pk=key.pk).update(owner_user=None, is_platform=True)
    key.refresh_from_db()
    return key


def _caller(user) -> Caller:
    account = Account.objects.get(user=user, kind=Account.Kind.MAIN)
    return Caller(api_key_id=None, user_id=user.pk, organization_id=None, key_pool_mode="any", byok_fallback=True,
                  monthly_limit=None, last_used_at=NOW, account_id=account.pk)


def _target(key: ProviderKey) -> Target:
    return Target(requested=f"{key.provider.slug}/m", provider_id=key.provider_id, provider_slug=key.provider.slug,
                  base_url="http://127.0.0.1:9", model="m", input_price=parse_usd("1"), output_price=parse_usd("2"))


def _settlement(user, key: ProviderKey, route: str, *, completion_tokens: int, request_id: str = "req_1"):
    picked = PickedKey(key_id=key.pk, secret="", route=route, owner_user_id=key.owner_user_id, owner_org_id=None)
    return Settlement(request_id=request_id, created_at=NOW, caller=_caller(user), target=_target(key), task="chat",
                      stream=False, outcome=RequestRecord.Outcome.SUCCEEDED, usage=Usage(0, completion_tokens),
                      key=picked)


def test_a_charge_beyond_the_balance_is_capped_and_a_replay_moves_nothing(user):
    key = _platform_key()
    # 1.5M output tokens at $2/M: $3.00, more than the $2.00 the member has
    s = _settlement(user, key, "platform", completion_tokens=1_500_000)

    first = run(request_settle(s=s))
    again = run(request_settle(s=s))

    assert first.cost == parse_usd("3.00") and first.charged == SIGNUP
    assert again == first
    assert main(user) == 0
    assert platform(Account.Kind.REVENUE) == SIGNUP
    assert RequestRecord.objects.get().charged == SIGNUP
    key.stats.refresh_from_db()
    assert key.stats.requests_served == 1 and key.stats.completion_tokens == 1_500_000
    assert_ledger_clean()


def test_the_byok_fee_past_the_free_tier_is_capped_at_what_is_left(user, settings):
    settings.HEADROOM_BYOK_FREE_REQUESTS = 1
    key = key_in_state(ProviderKey.Status.ACTIVE, owner=user, byok=True)
    ByokMonthlyUsage.objects.create(user=user, month=NOW.date().replace(day=1), requests=1)
    # the fee is 5% of $60.00 = $3.00; the member has $2.00
    receipt = run(request_settle(s=_settlement(user, key, "byok", completion_tokens=30_000_000)))

    assert receipt.is_byok and receipt.charged == SIGNUP
    assert RequestRecord.objects.get().fee == SIGNUP
    assert ByokMonthlyUsage.objects.get(user=user).requests == 2
    assert main(user) == 0
    assert_ledger_clean()


def test_an_organizations_byok_requests_count_on_the_organizations_month(user):
    from dataclasses import replace

    from accounts.services import organization_create

    org = organization_create(owner=user, name="Acme")
    key = key_in_state(ProviderKey.Status.ACTIVE, owner=user, byok=True)
    s = _settlement(user, key, "byok", completion_tokens=1_000)
    on_org = replace(s, caller=replace(s.caller, organization_id=org.pk, account_id=None))

    run(request_settle(s=on_org))
    run(request_settle(s=replace(on_org, request_id="req_2")))

    assert ByokMonthlyUsage.objects.get(organization=org).requests == 2
    assert not ByokMonthlyUsage.objects.filter(user=user).exists()
    assert_ledger_clean()


def test_a_hold_beyond_the_spendable_balance_is_refused(user):
    account = Account.objects.get(user=user, kind=Account.Kind.MAIN)

    def hold(amount, hold_id):
        return run(hold_place(Hold(account_id=account.pk, amount=amount, hold_id=hold_id)))

    assert hold(parse_usd("1.50"), "a")
    assert not hold(parse_usd("0.51"), "b")  # only $0.50 is spendable now
    assert hold(parse_usd("0.50"), "c")

    account.refresh_from_db()
    assert account.held == parse_usd("2.00") and account.balance == SIGNUP  # a hold moves no money
    assert sorted(BalanceHold.objects.values_list("request_id", flat=True)) == ["a", "c"]
    assert_ledger_clean()


def test_the_pick_takes_the_least_recently_used_key_and_leases_it_to_the_request(user):
    keys = [_platform_key(), _platform_key()]
    ProviderKey.objects.filter(pk=keys[1].pk).update(provider=keys[0].provider)

    def take(request_id="r"):
        return run(key_take(route="platform", include_exchange=False, provider_id=keys[0].provider_id,
                            user_id=user.pk, organization_id=None, request_id=request_id))

    taken = [take(f"r{i}").key["id"] for i in range(4)]
    assert taken == [keys[0].pk, keys[1].pk, keys[0].pk, keys[1].pk]
    assert sorted(keys[0].leases.values_list("request_id", flat=True)) == ["r0", "r2"]
    assert sorted(keys[1].leases.values_list("request_id", flat=True)) == ["r1", "r3"]
    ProviderKey.objects.filter(pk__in=[k.pk for k in keys]).update(status=ProviderKey.Status.PAUSED)
    none = take()
    assert none.key is None and not none.candidates


@pytest.mark.design
def test_the_columns_the_pick_stamps_are_in_no_index():
    """Why it exists: every request's pick rewrites lru_seq and last_used_at; indexed, each stamp would
    also write an entry into every index of the key table, where unindexed it is a heap-only update of
    the row alone (bench/README.md). An index added for a query would silently slow every request."""
    from django.db import connection

    stamped = {"lru_seq", "last_used_at"}
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, ProviderKey._meta.db_table)
    indexed = {name: set(c["columns"]) & stamped for name, c in found.items() if c["index"] or c["unique"]}
    assert not any(indexed.values()), indexed
    assert any(c["columns"] == ["provider_id", "status"] for c in found.values() if c["index"])


def test_a_charge_racing_a_concurrent_debit_is_capped_at_what_the_debit_left(user):
    """The settlement caps the charge at the balance its snapshot shows without locking the payer's row
    first; a debit committed meanwhile makes the not-below-zero CHECK refuse it, and it settles again
    with the row locked: the member pays what is left, never more, and nothing is written twice."""
    import threading

    from django.db import connection, transaction

    from billing.services import account_for_owner, ledger_transfer, platform_account

    key = _platform_key()
    debited, release = threading.Event(), threading.Event()

    def debit():
        with transaction.atomic():
            ledger_transfer(source=account_for_owner(owner=user, kind=Account.Kind.MAIN),
                            destination=platform_account(Account.Kind.ADJUSTMENTS), amount=parse_usd("1.50"),
                            idempotency_key="race", kind="adjustment")
            debited.set()
            release.wait(10)
        connection.close()

    settlement = _settlement(user, key, "platform", completion_tokens=500_000)  # $1.00
    thread = threading.Thread(target=debit)
    thread.start()
    debited.wait(10)

    async def settle_while_the_debit_commits():
        settling = asyncio.ensure_future(request_settle(s=settlement))
        await asyncio.sleep(0.5)  # the settlement has seen $2.00 and waits on the payer's row
        release.set()
        return await settling

    receipt = run(settle_while_the_debit_commits())
    thread.join(10)

    assert receipt.cost == parse_usd("1.00") and receipt.charged == parse_usd("0.50")
    assert main(user) == 0
    assert RequestRecord.objects.get().charged == parse_usd("0.50")
    assert_ledger_clean()


def _charge_only(user, key, *, request_id: str, completion_tokens: int):
    """A platform settlement that charges `completion_tokens` × $2/M and holds nothing."""
    return _settlement(user, key, "platform", completion_tokens=completion_tokens, request_id=request_id)


def _settle_together(settlements, monkeypatch) -> tuple[list, int]:
    """Settle concurrently, the way requests finishing together are; returns the receipts (or errors)
    and how many statements it took (requests waiting on one statement share the next)."""
    from pool.hotpath import settle

    statements = []
    real = settle.lane_fetchall

    async def counted(*args, **kwargs):
        statements.append(args[1])
        return await real(*args, **kwargs)

    async def together():
        return await asyncio.gather(*(request_settle(s=s) for s in settlements), return_exceptions=True)

    from billing.services import platform_account

    for kind in settle.PLATFORM_KINDS:  # as after the first settlement of a deployment
        platform_account(kind)
    monkeypatch.setattr(settle, "lane_fetchall", counted)
    receipts = run(together())
    return receipts, len(statements)


def test_settlements_sharing_a_statement_are_capped_in_turn(user, monkeypatch):
    """Four $0.75 charges against $2.00: each takes what the ones before it left, to the nanodollar."""
    key = _platform_key()
    settlements = [_charge_only(user, key, request_id=f"req_{i}", completion_tokens=375_000) for i in range(4)]

    receipts, _ = _settle_together(settlements, monkeypatch)

    assert sorted(r.charged for r in receipts) == [0, parse_usd("0.50"), parse_usd("0.75"), parse_usd("0.75")]
    assert all(r.cost == parse_usd("0.75") for r in receipts)
    assert main(user) == 0
    assert platform(Account.Kind.REVENUE) == SIGNUP
    assert sorted(RequestRecord.objects.values_list("charged", flat=True)) == sorted(r.charged for r in receipts)
    key.stats.refresh_from_db()
    assert key.stats.requests_served == 4
    assert_ledger_clean()


@pytest.mark.design
def test_settlements_waiting_on_one_statement_share_the_next(user, monkeypatch):
    """Why it exists: a statement's fixed cost (round trip, executor start-up, commit, flush) was most of
    a settlement's database cost (bench/README.md), so the settlements that wait while one is in
    flight go together in the next; a change that sent them one by one would pass every behaviour test."""
    key = _platform_key()
    settlements = [_charge_only(user, key, request_id=f"req_{i}", completion_tokens=1_000) for i in range(4)]

    _, statements = _settle_together(settlements, monkeypatch)

    assert statements == 2  # the first alone, the three that waited on it together


def test_the_same_request_twice_in_one_statement_is_settled_once(user, monkeypatch):
    key = _platform_key()
    first = _charge_only(user, key, request_id="req_a", completion_tokens=100_000)
    twice = _charge_only(user, key, request_id="req_b", completion_tokens=200_000)

    receipts, _ = _settle_together([first, twice, twice], monkeypatch)

    assert receipts[1] == receipts[2] and receipts[1].charged == parse_usd("0.40")
    assert RequestRecord.objects.count() == 2
    assert main(user) == SIGNUP - parse_usd("0.60")
    assert_ledger_clean()


def test_a_settlement_the_database_refuses_fails_alone(user, monkeypatch):
    """One bad request in a shared statement makes the statement fail as a whole; each of its requests
    is then settled on its own, so only the bad one fails, and every other settles exactly once."""
    from dataclasses import replace

    key = _platform_key()
    good = [_charge_only(user, key, request_id=f"req_{i}", completion_tokens=50_000) for i in range(3)]
    bad = good[1]
    bad = replace(bad, request_id="req_bad", usage=Usage(-1, 0))  # the record's CHECK refuses -1 tokens

    receipts, _ = _settle_together([good[0], bad, good[1], good[2]], monkeypatch)

    assert isinstance(receipts[1], Exception)
    assert [r.charged for i, r in enumerate(receipts) if i != 1] == [parse_usd("0.10")] * 3
    assert sorted(RequestRecord.objects.values_list("request_id", flat=True)) == ["req_0", "req_1", "req_2"]
    assert main(user) == SIGNUP - parse_usd("0.30")
    assert_ledger_clean()
