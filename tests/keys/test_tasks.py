"""The periodic sweeps and their beat schedule: each enqueues per-key tasks for exactly the keys due."""

from datetime import timedelta
from unittest import mock

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from config.celery import app
from keys import tasks
from keys.models import ProviderKey
from tests.keys.factories import key_in_state

pytestmark = pytest.mark.django_db
S = ProviderKey.Status


def test_the_beat_schedule_runs_every_periodic_keys_task():
    app.loader.import_default_modules()
    scheduled = {entry["task"]: entry["schedule"] for entry in django_settings.CELERY_BEAT_SCHEDULE.values()}
    for name in (
        "keys.tasks.provider_keys_reverify_exchange_task",
        "keys.tasks.provider_keys_probe_paused_task",
        "keys.tasks.provider_keys_sweep_task",
    ):
        assert name in app.tasks, name
        assert 0 < scheduled[name] <= 3600


def _delayed(task_name: str):
    return mock.patch.object(getattr(tasks, task_name), "delay")


def test_sweep_drains_disabling_keys_and_retries_stale_pending_ones(settings):
    settings.HEADROOM_PENDING_RECHECK_AFTER = 600
    disabling = key_in_state(S.DISABLING)
    stale = key_in_state(S.PENDING)
    fresh = key_in_state(S.PENDING)
    key_in_state(S.ACTIVE)
    ProviderKey.objects.filter(pk=stale.pk).update(updated_at=timezone.now() - timedelta(seconds=601))
    with _delayed("provider_key_drain_task") as drain, _delayed("provider_key_verify_task") as verify:
        assert tasks.provider_keys_sweep_task() == {"disabling": 1, "pending": 1, "stale_leases": 0}
    drain.assert_called_once_with(disabling.pk)
    verify.assert_called_once_with(stale.pk)
    assert fresh.pk not in [c.args[0] for c in verify.call_args_list]


def test_sweep_drops_leases_of_requests_that_died_with_their_process(settings):
    from keys.models import ProviderKeyLease
    from keys.services import provider_key_in_flight

    settings.HEADROOM_STALE_HOLD_SECONDS = 60
    key = key_in_state(S.ACTIVE, in_flight=2)
    ProviderKeyLease.objects.filter(request_id=f"req_in_flight_{key.pk}_0").update(
        created_at=timezone.now() - timedelta(seconds=61)
    )
    assert tasks.provider_keys_sweep_task()["stale_leases"] == 1
    assert provider_key_in_flight(key_id=key.pk) == 1  # the live request keeps its lease


def test_sweep_really_retires_a_drained_key():
    key = key_in_state(S.DISABLING, in_flight=0)
    tasks.provider_keys_sweep_task.delay()
    key.refresh_from_db()
    assert key.status == S.INACTIVE


def test_probe_sweep_picks_only_paused_keys_that_are_due(settings):
    settings.HEADROOM_PROBE_PAUSED_AFTER = 60
    now = timezone.now()
    due_by_header = key_in_state(S.PAUSED, retry_after_until=now - timedelta(seconds=1))
    not_yet = key_in_state(S.PAUSED, retry_after_until=now + timedelta(minutes=5))
    due_by_default = key_in_state(S.PAUSED)
    ProviderKey.objects.filter(pk=due_by_default.pk).update(status_changed_at=now - timedelta(seconds=61))
    key_in_state(S.PAUSED)  # paused a moment ago, no Retry-After: waits the default
    key_in_state(S.ACTIVE, retry_after_until=now - timedelta(seconds=1))
    with _delayed("provider_key_probe_task") as probe:
        assert tasks.provider_keys_probe_paused_task() == 2
    assert sorted(c.args[0] for c in probe.call_args_list) == sorted([due_by_header.pk, due_by_default.pk])
    assert not_yet.pk not in [c.args[0] for c in probe.call_args_list]


def test_exchange_sweep_reverifies_only_active_exchange_keys_with_a_secret():
    listed = key_in_state(S.ACTIVE, exchange=True)
    key_in_state(S.ACTIVE, exchange=False)
    key_in_state(S.EXHAUSTED, exchange=True)
    key_in_state(S.PAUSED, exchange=True)
    with _delayed("provider_key_reverify_exchange_task") as reverify:
        assert tasks.provider_keys_reverify_exchange_task() == 1
    reverify.assert_called_once_with(listed.pk)


def test_tasks_on_a_missing_key_do_nothing():
    assert tasks.provider_key_verify_task.delay(123456).get() == "skipped"
    assert tasks.provider_key_reverify_exchange_task.delay(123456).get() == "skipped"
    assert tasks.provider_key_probe_task.delay(123456).get() == "skipped"
    assert tasks.provider_key_drain_task.delay(123456).get() == "missing"
