"""The key state machine: every legal and every illegal transition, at the model and through the
services, each legal one audited and each illegal one refused without a trace."""

from datetime import timedelta

import pytest
from django.test import TestCase
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from keys.models import ProviderKey, ProviderKeyLease, ProviderKeyTransition
from keys.services import (
    ProviderKeyError,
    provider_key_deactivate,
    provider_key_drain,
    provider_key_in_flight,
    provider_key_reactivate,
    provider_key_record_429,
    provider_key_record_failure,
    provider_key_record_success,
    provider_key_revalidate,
)
from keys.services.provider_keys import fsm_move
from tests.keys.factories import key_in_state

pytestmark = pytest.mark.django_db

S = ProviderKey.Status
ALL_STATES = list(S.values)

# The whole machine, as the issue states it: (transition, source) -> target.
LEGAL = {
    ("activate", S.PENDING): S.ACTIVE,
    ("fail", S.PENDING): S.FAILED,
    ("pause", S.ACTIVE): S.PAUSED,
    ("resume", S.PAUSED): S.ACTIVE,
    ("exhaust", S.ACTIVE): S.EXHAUSTED,
    ("revalidate", S.EXHAUSTED): S.PENDING,
    ("revalidate", S.FAILED): S.PENDING,
    **{("disable", state): S.DISABLING for state in (S.PENDING, S.ACTIVE, S.PAUSED, S.EXHAUSTED, S.FAILED)},
    ("retire", S.DISABLING): S.INACTIVE,
}
TRANSITIONS = sorted({name for name, _ in LEGAL})


def test_the_declared_machine_is_exactly_the_specified_one():
    declared = {
        (t.name, t.source): t.target
        for t in ProviderKey._meta.get_field("status").get_all_transitions(ProviderKey)
    }
    assert declared == LEGAL


@pytest.mark.parametrize("state", ALL_STATES)
@pytest.mark.parametrize("name", TRANSITIONS)
def test_every_transition_from_every_state_at_the_model(name, state):
    key = key_in_state(state)
    target = LEGAL.get((name, state))
    if target is None:
        with pytest.raises(TransitionNotAllowed):
            getattr(key, name)()
        assert key.status == state
    else:
        getattr(key, name)()
        key.save()
        key.refresh_from_db()
        assert key.status == target


def test_status_cannot_be_assigned_directly():
    key = key_in_state(S.PENDING)
    with pytest.raises(AttributeError):
        key.status = S.ACTIVE


def _audit_rows(key):
    return list(ProviderKeyTransition.objects.filter(key=key).values_list("from_status", "to_status", "actor_id"))


# --- owner verbs through the services --------------------------------------------------------------


REACTIVATE_OK = {S.PAUSED: S.ACTIVE}
REVALIDATE_OK = {S.EXHAUSTED: S.PENDING, S.FAILED: S.PENDING}


@pytest.mark.parametrize("state", ALL_STATES)
def test_reactivate_from_every_state(state):
    key = key_in_state(state, consecutive_429s=3, retry_after_until=timezone.now() + timedelta(minutes=1))
    owner = key.owner_user
    if state in REACTIVATE_OK:
        provider_key_reactivate(key=key, actor=owner)
        key.refresh_from_db()
        assert key.status == S.ACTIVE
        assert key.consecutive_429s == 0 and key.retry_after_until is None
        assert _audit_rows(key) == [(state, S.ACTIVE, owner.pk)]
    else:
        with pytest.raises(ProviderKeyError, match=f"cannot resume a key that is {state}"):
            provider_key_reactivate(key=key, actor=owner)
        key.refresh_from_db()
        assert key.status == state
        assert _audit_rows(key) == []


@pytest.mark.parametrize("state", ALL_STATES)
def test_revalidate_from_every_state(state):
    key = key_in_state(state, failure_count=5, last_error="old trouble")
    owner = key.owner_user
    if state in REVALIDATE_OK:
        # the verification it enqueues is not run here (no commit): the key waits in PENDING
        provider_key_revalidate(key=key, actor=owner)
        key.refresh_from_db()
        assert key.status == S.PENDING
        assert key.failure_count == 0 and key.last_error == ""
        assert _audit_rows(key) == [(state, S.PENDING, owner.pk)]
    else:
        with pytest.raises(ProviderKeyError, match=f"cannot revalidate a key that is {state}"):
            provider_key_revalidate(key=key, actor=owner)
        key.refresh_from_db()
        assert key.status == state
        assert _audit_rows(key) == []


@pytest.mark.parametrize("state", [S.PENDING, S.ACTIVE, S.PAUSED, S.EXHAUSTED, S.FAILED])
def test_deactivate_from_every_live_state_with_nothing_in_flight_ends_inactive(state):
    key = key_in_state(state)
    owner = key.owner_user
    provider_key_deactivate(key=key, actor=owner)
    key.refresh_from_db()
    assert key.status == S.INACTIVE
    assert key.has_secret  # deactivated, not removed: the secret stays
    assert _audit_rows(key) == [(state, S.DISABLING, owner.pk), (S.DISABLING, S.INACTIVE, owner.pk)]


@pytest.mark.parametrize("state", [S.PENDING, S.ACTIVE, S.PAUSED, S.EXHAUSTED, S.FAILED])
def test_deactivate_with_requests_in_flight_waits_in_disabling_until_drained(state, django_capture_on_commit_callbacks):
    key = key_in_state(state, in_flight=2)
    owner = key.owner_user
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        provider_key_deactivate(key=key, actor=owner, remove=True)
    # the drain task ran (eagerly) but found requests still in flight
    assert len(callbacks) == 1
    key.refresh_from_db()
    assert key.status == S.DISABLING
    assert key.has_secret

    ProviderKeyLease.objects.filter(key=key).delete()
    assert provider_key_drain(key_id=key.pk) == S.INACTIVE
    key.refresh_from_db()
    assert not key.has_secret and key.fingerprint == "" and key.removed_at is not None
    assert _audit_rows(key) == [
        (state, S.DISABLING, owner.pk),
        (S.DISABLING, S.INACTIVE, None),
        (S.INACTIVE, S.INACTIVE, None),  # the scrub, audited
    ]


def test_drain_forces_a_stuck_in_flight_count_after_the_timeout(settings):
    settings.HEADROOM_DISABLING_TIMEOUT = 60
    key = key_in_state(S.DISABLING, in_flight=1)
    assert provider_key_drain(key_id=key.pk) == S.DISABLING
    ProviderKey.objects.filter(pk=key.pk).update(status_changed_at=timezone.now() - timedelta(seconds=61))
    assert provider_key_drain(key_id=key.pk) == S.INACTIVE
    assert provider_key_in_flight(key_id=key.pk) == 0
    assert "forced" in ProviderKeyTransition.objects.get(key=key, to_status=S.INACTIVE).reason


@pytest.mark.parametrize("state", [S.DISABLING, S.INACTIVE])
def test_deactivating_again_is_harmless_and_remove_later_scrubs(state):
    key = key_in_state(state)
    owner = key.owner_user
    provider_key_deactivate(key=key, actor=owner)
    key.refresh_from_db()
    assert key.status in (S.INACTIVE, S.DISABLING)
    provider_key_deactivate(key=key, actor=owner, remove=True)
    key.refresh_from_db()
    assert key.status == S.INACTIVE
    assert not key.has_secret


def test_an_inactive_key_has_no_way_back():
    key = key_in_state(S.INACTIVE)
    for verb in (provider_key_reactivate, provider_key_revalidate):
        with pytest.raises(ProviderKeyError):
            verb(key=key, actor=key.owner_user)
    key.refresh_from_db()
    assert key.status == S.INACTIVE


# --- the gateway's hot-path moves ------------------------------------------------------------------


def test_three_429s_pause_an_active_key_once_and_store_retry_after(settings):
    settings.HEADROOM_PAUSE_AFTER_429S = 3
    key = key_in_state(S.ACTIVE)
    before = timezone.now()
    assert provider_key_record_429(key_id=key.pk, retry_after_seconds=None) is False
    assert provider_key_record_429(key_id=key.pk, retry_after_seconds=None) is False
    assert provider_key_record_429(key_id=key.pk, retry_after_seconds=30) is True
    assert provider_key_record_429(key_id=key.pk, retry_after_seconds=30) is False  # already paused
    key.refresh_from_db()
    assert key.status == S.PAUSED
    assert key.consecutive_429s == 4
    assert before + timedelta(seconds=29) < key.retry_after_until < timezone.now() + timedelta(seconds=31)
    assert _audit_rows(key) == [(S.ACTIVE, S.PAUSED, None)]
    assert "3 consecutive upstream 429s" in key.transitions.get().reason


def test_a_success_between_429s_resets_the_count():
    key = key_in_state(S.ACTIVE)
    provider_key_record_429(key_id=key.pk, retry_after_seconds=None)
    provider_key_record_429(key_id=key.pk, retry_after_seconds=None)
    provider_key_record_success(key_id=key.pk)
    provider_key_record_429(key_id=key.pk, retry_after_seconds=None)
    key.refresh_from_db()
    assert key.status == S.ACTIVE and key.consecutive_429s == 1


@pytest.mark.design
def test_record_success_is_one_conditional_update_that_matches_no_row_when_counters_are_zero(
    django_assert_num_queries,
):
    """Why it exists: the gateway records every answered request's success; on the common path (no
    errors to reset) it must be one UPDATE that writes nothing, not a read and a write (bench/README.md)."""
    key = key_in_state(S.ACTIVE)
    with django_assert_num_queries(1) as captured:
        provider_key_record_success(key_id=key.pk)
    sql = captured.captured_queries[0]["sql"]
    assert sql.upper().startswith("UPDATE") and "consecutive_429s" in sql and ">" in sql


@pytest.mark.parametrize("state", [S.PENDING, S.PAUSED, S.EXHAUSTED, S.FAILED, S.DISABLING, S.INACTIVE])
def test_429s_and_failures_move_only_active_keys(state, settings):
    settings.HEADROOM_PAUSE_AFTER_429S = 1
    settings.HEADROOM_EXHAUST_AFTER_FAILURES = 1
    key = key_in_state(state)
    assert provider_key_record_429(key_id=key.pk, retry_after_seconds=5) is False
    assert provider_key_record_failure(key_id=key.pk, reason="upstream 500") is False
    key.refresh_from_db()
    assert key.status == state
    assert _audit_rows(key) == []


def test_failures_exhaust_an_active_key_at_the_threshold(settings):
    settings.HEADROOM_EXHAUST_AFTER_FAILURES = 2
    key = key_in_state(S.ACTIVE)
    assert provider_key_record_failure(key_id=key.pk, reason="upstream 500") is False
    assert provider_key_record_failure(key_id=key.pk, reason="upstream timeout\nbefore the first byte") is True
    key.refresh_from_db()
    assert key.status == S.EXHAUSTED
    assert key.last_error == "upstream timeout before the first byte"
    assert _audit_rows(key) == [(S.ACTIVE, S.EXHAUSTED, None)]


def test_hot_path_moves_read_source_and_target_from_the_declarations():
    assert fsm_move("pause").source == (S.ACTIVE,) and fsm_move("pause").target == S.PAUSED
    assert fsm_move("exhaust").source == (S.ACTIVE,) and fsm_move("exhaust").target == S.EXHAUSTED
    with pytest.raises(LookupError):
        fsm_move("teleport")


def test_transition_audit_happens_in_the_same_transaction_as_the_move():
    key = key_in_state(S.PAUSED)
    with TestCase.captureOnCommitCallbacks(execute=False):
        provider_key_reactivate(key=key, actor=None, reason="probe succeeded")
    row = ProviderKeyTransition.objects.get(key=key)
    assert (row.from_status, row.to_status, row.actor_id, row.reason) == (S.PAUSED, S.ACTIVE, None, "probe succeeded")
    assert row.at is not None
