"""Reading the ledger in gateway tests."""

from decimal import Decimal

from billing.models import Account
from core.money import parse_usd
from billing.selectors import balances_for_owner
from billing.services import ledger_problems

SIGNUP = parse_usd("2.00")


def main(owner) -> int:
    return balances_for_owner(owner=owner).main


def frozen(owner) -> int:
    return balances_for_owner(owner=owner).frozen


def platform(kind: str) -> int:
    account = Account.objects.filter(kind=kind, user=None, organization=None).first()
    return account.balance if account else 0


def spend_all(user) -> None:
    """Move a member's whole main balance out through the ledger (an adjustment)."""
    from billing.services import account_for_owner, ledger_transfer, platform_account

    source = account_for_owner(owner=user, kind=Account.Kind.MAIN)
    if source.balance:
        ledger_transfer(source=source, destination=platform_account(Account.Kind.ADJUSTMENTS),
                        amount=source.balance, idempotency_key=f"test-spend-all:{user.pk}", kind="adjustment")


def fund_exactly(user, amount: int) -> None:
    """Leave a member's main balance at exactly `amount` nanodollars (adjustments through the ledger)."""
    from billing.services import account_for_owner, ledger_transfer, platform_account

    spend_all(user)
    ledger_transfer(source=platform_account(Account.Kind.ADJUSTMENTS), destination=account_for_owner(
        owner=user, kind=Account.Kind.MAIN), amount=amount, idempotency_key=f"test-fund:{user.pk}", kind="adjustment")


def exchange_settlement(payer, key, *, completion_tokens: int, request_id: str = "req_1", outcome: str = "succeeded"):
    """What the gateway hands pool.services.request_settle once `key` (an exchange key) served `payer`:
    a model priced $1/M in and $2/M out, no prompt."""
    from datetime import datetime, timezone

    from pool.selectors import Caller, Target
    from pool.services import PickedKey, Settlement, Usage

    now = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    account = Account.objects.get(user=payer, kind=Account.Kind.MAIN)
    caller = Caller(api_key_id=None, user_id=payer.pk, organization_id=None, key_pool_mode="any", byok_fallback=True,
                    monthly_limit=None, last_used_at=now, account_id=account.pk)
    target = Target(requested=f"{key.provider.slug}/m", provider_id=key.provider_id, provider_slug=key.provider.slug,
                    base_url="http://127.0.0.1:9", model="m", input_price=parse_usd("1"), output_price=parse_usd("2"))
    picked = PickedKey(key_id=key.pk, secret="", route="exchange", owner_user_id=key.owner_user_id, owner_org_id=None)
    return Settlement(request_id=request_id, created_at=now, caller=caller, target=target, task="chat", stream=False,
                      outcome=outcome, usage=Usage(0, completion_tokens), key=picked)


async def burst(api_key: str, url: str, n: int, body_of) -> list:
    """`n` chat completions at once through the official SDK, `body_of(i)` the i-th one's arguments
    (model included); each result is the answer or the exception it raised."""
    import asyncio

    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=api_key, base_url=f"{url}/v1", max_retries=0, timeout=60)
    try:
        return await asyncio.gather(*(client.chat.completions.create(**body_of(i)) for i in range(n)),
                                    return_exceptions=True)
    finally:
        await client.close()


def usd_float(nanos: int) -> float:
    return float(Decimal(nanos) / 1_000_000_000)


def assert_ledger_clean() -> None:
    assert ledger_problems() == []  # what `manage.py ledger_check` checks, registered checks included
    assert sum(Account.objects.values_list("balance", flat=True)) == 0


def wait_until(predicate, *, seconds: float = 5.0) -> bool:
    """Poll `predicate` until it holds (what the gateway's thread commits shows up a moment later)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def run_on_own_loop(coroutine):
    """One event loop per call, as the gateway has one per process; the loop's database lanes and
    pools closed after (they belong to the loop), and its worker threads' Django connections: a thread
    that ends with one open keeps it out of Django's pool for good, and a test run of many loops would
    exhaust the pool (pool.hotpath.db.db_call runs the ORM in the loop's default thread pool)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    from pool.hotpath import db

    wrappers = []  # each worker thread's own Django connection wrapper, registered as the thread starts
    executor = ThreadPoolExecutor(initializer=lambda: wrappers.append(connections["default"]))

    async def with_db_closed():
        asyncio.get_running_loop().set_default_executor(executor)
        try:
            return await coroutine
        finally:
            await db.close_all()

    try:
        return asyncio.run(with_db_closed())
    finally:
        executor.shutdown(wait=True)
        for wrapper in wrappers:  # their threads have ended: closing here gives the connections back
            wrapper.inc_thread_sharing()
            try:
                wrapper.close()
            finally:
                wrapper.dec_thread_sharing()


def holds_during(call, *, fake, secrets, delay: float = 0.4):
    """`call()`'s result and every hold seen while it ran ({hold id: amount}).

    Holds exist only while their request is in flight, so the fake holds back its first byte for the
    keys in `secrets` long enough for them to be seen; the delay is lifted afterwards.
    """
    import threading
    import time

    from django.db import connection

    from billing.models import BalanceHold

    for secret in secrets:
        fake.script(secret, first_byte_delay=delay)
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as error:  # re-raised in the test's thread
            outcome["error"] = error

    seen: dict[str, int] = {}
    thread = threading.Thread(target=run)
    thread.start()
    while thread.is_alive():
        seen.update(BalanceHold.objects.values_list("request_id", "amount"))
        time.sleep(0.02)
    thread.join()
    connection.close()  # this thread's connection, opened to look
    for secret in secrets:
        fake.script(secret)  # no fault: answered at once again
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], seen
