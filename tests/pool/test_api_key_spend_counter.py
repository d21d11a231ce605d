"""The monthly spend counters of API keys with a limit: what the limit reads instead of the month's
request records. The settlement keeps them (every test's ledger check compares each counter with its
key's records, pool.selectors.api_key_spend_violations); the migration that brought them fills them
from the records already settled."""

from datetime import datetime, timezone

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from accounts.models import ApiKey
from billing.models import ApiKeyMonthlySpend
from billing.services import ledger_problems

BEFORE = [("pool", "0009_holds_released_by_billing"), ("billing", "0008_holds_release"), ("accounts", "0003_api_key_scopes")]


@pytest.mark.django_db(transaction=True)
def test_the_migration_fills_each_keys_months_from_its_charged_records():
    # given a database from before the counters, with requests of API keys over two months
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    try:
        _requests_settled_before_the_counters(executor)
    finally:  # when the migrations run forward (the next tests need the whole schema, whatever happened)
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    # then each limited key's month holds the sum of its charged records
    first, second, _ = ApiKey.objects.order_by("pk")
    counted = {(s.api_key_id, s.month.isoformat(), s.charged) for s in ApiKeyMonthlySpend.objects.all()}
    assert counted == {(first.pk, "2026-11-01", 700), (first.pk, "2026-12-01", 11), (second.pk, "2026-12-01", 40)}
    assert not [p for p in ledger_problems() if "spend counter" in p]


def _requests_settled_before_the_counters(executor) -> None:
    old = executor.loader.project_state(BEFORE).apps
    user = old.get_model("accounts", "User").objects.create(email="old@example.com")
    provider = old.get_model("keys", "Provider").objects.create(slug="oldai", name="Old AI", base_url="https://x.test/v1")
    api_key = old.get_model("accounts", "ApiKey")
    first, second, unlimited = (
        api_key.objects.create(user=user, name=n, prefix=n, hashed_key=n * 8, monthly_limit=limit)
        for n, limit in (("a", 10**9), ("b", 10**9), ("c", None))
    )
    record = old.get_model("pool", "RequestRecord")
    november, december = datetime(2026, 11, 30, 23, 59, tzinfo=timezone.utc), datetime(2026, 12, 1, tzinfo=timezone.utc)
    for n, (key, at, charged) in enumerate([
        (first, november, 700), (first, december, 5), (first, december, 6), (first, december, 0),
        (second, december, 40),
        (unlimited, december, 8), (None, december, 999),  # no limit, or no API key any more: no counter
    ]):
        record.objects.create(request_id=f"r{n}", created_at=at, api_key=key, requester=user, route="platform",
                              provider=provider, model="m", outcome="succeeded", input_price=1, output_price=1,
                              cost=charged, charged=charged)
