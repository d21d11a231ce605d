"""Race, through /v1 with the official SDK: many concurrent requests by a payer with a tiny balance, all
served by a member's exchange key, whose charges are capped at what the balance has left. The seller
earns exactly the payout rate of what was collected, request by request as pool_settle rounds it
(core.money.percent_of), never of the notional cost (SPEC "Served ≤ collected", issue 12).

How the charges get capped: every request is held for as much as it can cost, so the upstream cannot be
made to bill more than was held; instead, while the requests wait for the provider's first byte, an
adjustment debits the payer's balance (a ledger transfer does not wait for holds, as an admin's or a
withdrawal's may not), leaving one and a half requests' worth. The first settlement collects its cost,
the next what is left, the others nothing: one capped, the rest earning 0.
"""

import threading
import time

import openai
import pytest

from billing.models import Account, LedgerTransaction
from core.money import percent_of
from billing.services import account_for_owner, ledger_transfer, platform_account
from exchange.models import ExchangeEarning
from exchange.selectors import payout_rate_resolve
from pool.models import RequestRecord
from tests.pool.conftest import COMPLETION_TOKENS, COST, PROMPT
from tests.pool.helpers import assert_ledger_clean, frozen, main, spend_all, usd_float, wait_until

MODEL_ID = "fakeai/tiny"
REQUESTS = 40


def _adjust(user, amount: int, key: str, *, to_member: bool) -> None:
    member = account_for_owner(owner=user, kind=Account.Kind.MAIN)
    platform = platform_account(Account.Kind.ADJUSTMENTS)
    source, destination = (platform, member) if to_member else (member, platform)
    ledger_transfer(source=source, destination=destination, amount=amount, idempotency_key=key, kind="adjustment")


def _fire(member, url: str, n: int, **body) -> tuple[list[threading.Thread], list[str]]:
    """`n` chat completions at once, each on its own SDK client; the threads and what each got
    ("served" or the HTTP status), filled in as they finish."""
    outcomes: list[str] = []

    def one():
        try:
            member.client(url).chat.completions.create(model=MODEL_ID, messages=PROMPT, **body)
            outcomes.append("served")
        except openai.APIStatusError as error:
            outcomes.append(str(error.status_code))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    return threads, outcomes


def test_an_exchange_seller_earns_exactly_the_rate_of_what_concurrent_capped_requests_collected(world):
    bob = world.member()
    key = world.key(owner=bob.user, exchange=True)  # the only key: every request is served on it
    rate = payout_rate_resolve(user=bob.user, provider=world.provider, task="chat").percent
    alice = world.member()
    spend_all(alice.user)
    _adjust(alice.user, 20 * COST, "race-top-up", to_member=True)  # $0.00086: about 18 holds of ~$0.000046
    left = COST + COST // 2  # what the debit leaves: one request and a half
    world.fake.script(key.secret, first_byte_delay=3.0)

    threads, outcomes = _fire(alice, world.url, REQUESTS, max_tokens=COMPLETION_TOKENS)
    # The requests the holds let through are at the provider, waiting for its first byte: debit then.
    seen = [-1]

    def arrivals_stopped():
        now = world.fake.count(key=key.secret, path="/chat/completions")
        stopped, seen[0] = now == seen[0] and now > 0, now
        return stopped or time.sleep(0.25)

    assert wait_until(arrivals_stopped, seconds=10)
    balance = main(alice.user)
    _adjust(alice.user, balance - left, "race-debit", to_member=False)
    for thread in threads:
        thread.join(30)

    records = list(RequestRecord.objects.filter(requester=alice.user).order_by("settled_at", "id"))
    earnings = {e.request_id: e for e in ExchangeEarning.objects.filter(provider_key=key)}
    collected = sum(r.charged for r in records)
    earned = sum(e.amount for e in earnings.values())
    expected = sum(percent_of(r.charged, rate) for r in records)
    capped = [r for r in records if 0 < r.charged < r.cost]
    uncollected = [r for r in records if r.charged == 0]
    print(
        f"\n{REQUESTS} concurrent requests, {outcomes.count('served')} served, {outcomes.count('402')} refused (402);"
        f" balance ${usd_float(balance):.9f} debited to ${usd_float(left):.9f} while in flight\n"
        f"notional ${usd_float(sum(r.cost for r in records)):.9f}, collected ${usd_float(collected):.9f}"
        f" ({len(records) - len(capped) - len(uncollected)} in full, {len(capped)} capped, {len(uncollected)} with 0)\n"
        f"earned ${usd_float(earned):.9f} at {rate}%; rate × collected per request ${usd_float(expected):.9f};"
        f" {rate}% of notional would be ${usd_float(percent_of(sum(r.cost for r in records), rate)):.9f}"
    )

    served = outcomes.count("served")
    assert served >= 3 and set(outcomes) <= {"served", "402"}
    assert len(records) == served and {(r.route, r.outcome, r.cost) for r in records} == {("exchange", "succeeded", COST)}
    assert collected == left and main(alice.user) == 0  # everything left, not a nanodollar more
    assert (len(capped), len(uncollected)) == (1, served - 2)
    # exactly rate × collected, request by request, and never more than rate × the total collected
    assert earned == expected == frozen(bob.user)
    assert earned * 100 <= collected * rate + 50 * len(records)
    for r in records:
        e = earnings[r.request_id]
        assert (e.settled_cost, e.collected, e.amount, r.reward) == (r.cost, r.charged, percent_of(r.charged, rate),
                                                                     e.amount)
    for r in uncollected:
        assert earnings[r.request_id].ledger_transaction_id is None
        assert not LedgerTransaction.objects.filter(idempotency_key=f"exchange-earning:{r.request_id}").exists()
    assert_ledger_clean()


def test_a_cut_exchange_request_is_charged_but_earns_nothing(world):
    bob = world.member()
    key = world.key(owner=bob.user, exchange=True)
    alice = world.member()
    world.fake.script(key.secret, cut_stream_after=5)

    client = alice.client(world.url)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model=MODEL_ID, messages=PROMPT, stream=True))

    assert wait_until(lambda: RequestRecord.objects.exists())
    record = RequestRecord.objects.get()
    assert (record.route, record.outcome, record.reward) == ("exchange", RequestRecord.Outcome.CUT, 0)
    assert record.charged > 0
    assert not ExchangeEarning.objects.exists() and frozen(bob.user) == 0
    assert_ledger_clean()


def test_uncapped_requests_billed_beyond_the_balance_earn_the_rate_of_what_was_collected(world):
    """The other way a charge is capped: the upstream bills more than the balance covers. A realistic
    provider answers an uncapped request with all of the model's output limit (here 100,000 tokens,
    $0.20), far beyond the $0.05 the payer has. Whether the gateway lets that happen is the hold's
    business (issue 12: the cap the provider reads is the cap that was held); whatever was served, the
    seller earns the rate of what was collected, request by request, and never more."""
    bob = world.member()
    key = world.key(owner=bob.user, exchange=True)
    rate = payout_rate_resolve(user=bob.user, provider=world.provider, task="chat").percent
    alice = world.member()
    spend_all(alice.user)
    _adjust(alice.user, 50_000_000, "uncapped-top-up", to_member=True)  # $0.05
    world.fake.script(key.secret, billing="realistic")
    world.fake.set_model_limits("tiny", max_output_tokens=100_000)

    threads, outcomes = _fire(alice, world.url, 20)
    for thread in threads:
        thread.join(30)

    records = list(RequestRecord.objects.filter(requester=alice.user))
    earnings = {e.request_id: e for e in ExchangeEarning.objects.filter(provider_key=key)}
    collected = sum(r.charged for r in records)
    earned = sum(e.amount for e in earnings.values())
    upstream = world.fake.totals(key=key.secret)
    print(
        f"\n20 uncapped requests: {outcomes.count('served')} served, {outcomes.count('402')} refused (402);"
        f" notional ${usd_float(sum(r.cost for r in records)):.9f}, collected ${usd_float(collected):.9f}"
        f" ({sum(1 for r in records if r.charged < r.cost)} charged less than their cost); upstream billed {upstream}\n"
        f"earned ${usd_float(earned):.9f} at {rate}% (rate × collected per request:"
        f" ${usd_float(sum(percent_of(r.charged, rate) for r in records)):.9f})"
    )

    assert records and collected <= 50_000_000
    assert earned == sum(percent_of(r.charged, rate) for r in records) == frozen(bob.user)
    assert earned * 100 <= collected * rate + 50 * len(records)
    for r in records:
        assert (earnings[r.request_id].collected, earnings[r.request_id].amount) == (r.charged,
                                                                                    percent_of(r.charged, rate))
    assert_ledger_clean()
