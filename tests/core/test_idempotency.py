"""The Idempotency-Key store: kept HEADROOM_IDEMPOTENCY_KEY_TTL seconds, then deleted by a beat task."""

from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from core.models import IdempotencyRecord
from core.tasks import idempotency_records_delete_expired_task
from tests.payouts.factories import fund_frozen

CONVERSIONS = "/api/v1/payouts/conversions"


def _convert(client, key: str):
    return client.post(CONVERSIONS, {"amount": "0.10"}, format="json", HTTP_IDEMPOTENCY_KEY=key)


@pytest.mark.django_db
def test_the_cleanup_task_deletes_only_expired_records(authed_client, user, settings):
    # given two remembered requests, one of them older than the TTL
    settings.HEADROOM_IDEMPOTENCY_KEY_TTL = 3600
    fund_frozen(user, "1.00")
    _convert(authed_client, "old")
    _convert(authed_client, "fresh")
    IdempotencyRecord.objects.filter(key="old").update(created_at=timezone.now() - timedelta(hours=2))
    # when the beat task runs
    deleted = idempotency_records_delete_expired_task.delay().get()
    # then only the expired one is gone
    assert deleted == 1
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["fresh"]


def test_the_cleanup_task_is_on_the_beat_schedule():
    tasks = {entry["task"] for entry in django_settings.CELERY_BEAT_SCHEDULE.values()}
    assert "core.tasks.idempotency_records_delete_expired_task" in tasks
    assert django_settings.HEADROOM_IDEMPOTENCY_KEY_TTL == 24 * 60 * 60


@pytest.mark.django_db(transaction=True)
def test_the_migration_moves_payouts_records_into_core():
    # given a database at the state before core took the store over, with one payouts record in it
    before = [("payouts", "0003_billing_owner_organization"), ("core", "0001_initial")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old_apps = executor.loader.project_state(before).apps
    user = old_apps.get_model("accounts", "User").objects.create(email="old@example.com")
    created = timezone.now() - timedelta(hours=3)
    old = old_apps.get_model("payouts", "IdempotencyRecord")
    old.objects.create(user=user, key="k-1", request_hash="h" * 64, response_status=201, response_body={"id": 7})
    old.objects.update(created_at=created)
    # when the migrations run forward
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    # then the record is in core's table, unchanged, age included
    record = IdempotencyRecord.objects.get()
    assert (record.user_id, record.key, record.response_status, record.response_body) == (user.pk, "k-1", 201, {"id": 7})
    assert record.created_at == created
