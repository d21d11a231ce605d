"""Hot-path key moves and enrolment under concurrent writers, on real PostgreSQL (threads, committed
transactions): a key is paused or exhausted exactly once, and a secret is enrolled exactly once."""


import pytest

from keys.models import ProviderKey, ProviderKeyTransition
from keys.services import (
    ProviderKeyError,
    provider_key_create,
    provider_key_record_429,
    provider_key_record_failure,
)
from tests.accounts.factories import UserFactory
from tests.concurrency import run_concurrently
from tests.keys.factories import ProviderFactory, key_in_state, new_secret

pytestmark = pytest.mark.django_db(transaction=True)
S = ProviderKey.Status




def test_concurrent_429s_pause_the_key_exactly_once(settings):
    # given an ACTIVE key and a threshold of three
    settings.HEADROOM_PAUSE_AFTER_429S = 3
    key = key_in_state(S.ACTIVE)
    # when twelve gateway workers see a 429 at the same moment
    outcomes = run_concurrently(12, lambda i: provider_key_record_429(key_id=key.pk, retry_after_seconds=10))
    # then every 429 is counted, and exactly one worker paused it (one audit row)
    assert outcomes.count(True) == 1
    key.refresh_from_db()
    assert key.status == S.PAUSED and key.consecutive_429s == 12
    assert ProviderKeyTransition.objects.filter(key=key, to_status=S.PAUSED).count() == 1


def test_concurrent_failures_exhaust_the_key_exactly_once(settings):
    settings.HEADROOM_EXHAUST_AFTER_FAILURES = 2
    key = key_in_state(S.ACTIVE)
    outcomes = run_concurrently(10, lambda i: provider_key_record_failure(key_id=key.pk, reason=f"upstream 50{i % 4}"))
    assert outcomes.count(True) == 1
    key.refresh_from_db()
    assert key.status == S.EXHAUSTED and key.failure_count == 10
    assert ProviderKeyTransition.objects.filter(key=key).count() == 1


def test_the_same_secret_raced_by_many_members_is_enrolled_once():
    provider = ProviderFactory()
    users = [UserFactory() for _ in range(8)]
    secret = new_secret()

    def enrol(i: int) -> str:
        try:
            provider_key_create(owner=users[i], provider=provider, secret=secret, actor=users[i])
            return "ok"
        except ProviderKeyError as error:
            return error.code

    outcomes = run_concurrently(8, enrol)
    assert outcomes.count("ok") == 1
    assert outcomes.count("duplicate_key") == 7
    assert ProviderKey.objects.count() == 1
