"""Verification, exchange re-verification and probes against the fake provider over real HTTP:
every balance-API shape × (valid, below $0.10, invalid key, provider down, malformed reply)."""

from datetime import timedelta
from decimal import Decimal
from unittest import mock

import pytest
from django.utils import timezone

from keys.models import ProviderKey
from keys.services import verification
from keys.tasks import (
    MAX_RETRIES,
    provider_key_probe_task,
    provider_key_reverify_exchange_task,
    provider_key_verify_task,
    retry_countdown,
)
from tests.accounts.factories import UserFactory
from tests.keys.conftest import BALANCE_KINDS
from tests.keys.factories import enrol, key_in_state, new_secret

pytestmark = pytest.mark.django_db
S = ProviderKey.Status

BALANCE_ROUTE = {
    "deepseek": "/v1/user/balance",
    "openrouter": "/v1/key",
    "moonshot": "/v1/users/me/balance",
    "siliconflow": "/v1/user/info",
    "none": "/v1/models",
}


def _reasons(key) -> list[tuple[str, str, str]]:
    return list(key.transitions.values_list("from_status", "to_status", "reason"))


@pytest.mark.parametrize("kind", BALANCE_KINDS)
def test_valid_key_becomes_active_with_its_exact_balance(kind, make_provider, fake):
    # given a key with $12.34 left at the provider
    secret = new_secret()
    fake.script(secret, balance=Decimal("12.34"))
    # when it is enrolled for the exchange
    key = enrol(UserFactory(), make_provider(kind), secret=secret, exchange=True)
    # then it was checked once, on the provider's balance endpoint, with the secret as Bearer token
    assert key.status == S.ACTIVE
    assert key.verified_balance == 12_340_000_000
    assert key.verified_at is not None and key.last_error == ""
    assert [(r.method, r.path, r.key) for r in fake.requests] == [("GET", BALANCE_ROUTE[kind], secret)]


def test_a_provider_without_a_balance_api_is_checked_with_an_authenticated_models_call(make_provider, fake):
    secret = new_secret()
    key = enrol(UserFactory(), make_provider("none"), secret=secret, byok=True)
    assert key.status == S.ACTIVE and key.verified_balance is None
    assert [(r.method, r.path, r.key) for r in fake.requests] == [("GET", "/v1/models", secret)]


@pytest.mark.parametrize("kind", BALANCE_KINDS)
def test_exchange_key_below_ten_cents_is_exhausted_with_the_reason(kind, make_provider, fake):
    secret = new_secret()
    fake.script(secret, balance=Decimal("0.09"))
    key = enrol(UserFactory(), make_provider(kind), secret=secret, exchange=True)
    assert key.status == S.EXHAUSTED
    assert key.verified_balance == 90_000_000
    assert key.last_error == "exchange balance $0.09 is below the $0.10 minimum"
    assert _reasons(key)[1:] == [
        (S.PENDING, S.ACTIVE, "verified"),
        (S.ACTIVE, S.EXHAUSTED, "exchange balance $0.09 is below the $0.10 minimum"),
    ]


@pytest.mark.parametrize("kind", BALANCE_KINDS)
def test_exactly_ten_cents_is_enough_and_a_low_balance_is_fine_without_the_exchange(kind, make_provider, fake):
    provider = make_provider(kind)
    at_minimum, low = new_secret(), new_secret()
    fake.script(at_minimum, balance=Decimal("0.10"))
    fake.script(low, balance=Decimal("0.05"))
    assert enrol(UserFactory(), provider, secret=at_minimum, exchange=True).status == S.ACTIVE
    assert enrol(UserFactory(), provider, secret=low, byok=True).status == S.ACTIVE


@pytest.mark.parametrize("kind", BALANCE_KINDS)
def test_zero_balance_is_exhausted_even_without_the_exchange(kind, make_provider, fake):
    secret = new_secret()
    fake.script(secret, balance=Decimal("0"))
    key = enrol(UserFactory(), make_provider(kind), secret=secret, byok=True)
    assert key.status == S.EXHAUSTED
    assert key.last_error == "the provider reports no usable balance"


@pytest.mark.parametrize("kind", [*BALANCE_KINDS, "none"])
def test_invalid_key_fails_with_the_reason(kind, make_provider, fake):
    secret = new_secret()
    fake.script(secret, status=401)
    key = enrol(UserFactory(), make_provider(kind), secret=secret, byok=True)
    assert key.status == S.FAILED
    assert key.last_error == "the provider rejected the key (HTTP 401)"
    assert _reasons(key)[1:] == [(S.PENDING, S.FAILED, "the provider rejected the key (HTTP 401)")]


@pytest.mark.parametrize("kind", BALANCE_KINDS)
def test_malformed_balance_reply_fails_closed(kind, make_provider, fake):
    secret = new_secret()
    fake.script(secret, malformed_balance=True)
    key = enrol(UserFactory(), make_provider(kind), secret=secret, exchange=True)
    assert key.status == S.FAILED
    assert key.last_error == f"the provider's balance reply could not be read: {kind} balance reply is not valid JSON"


@pytest.mark.parametrize("kind", [*BALANCE_KINDS, "none"])
def test_provider_down_is_retried_with_backoff_then_left_pending_with_the_reason(kind, make_provider, dead_url):
    provider = make_provider(kind, base_url=dead_url)
    with mock.patch.object(verification, "provider_key_check", wraps=verification.provider_key_check) as check:
        key = enrol(UserFactory(), provider, byok=True)
    assert check.call_count == MAX_RETRIES + 1
    assert key.status == S.PENDING
    assert key.last_error == "the provider could not be reached (ConnectError)"


def test_a_worker_retries_with_exponential_backoff(make_provider, dead_url):
    # given a worker (not eager) running attempt n of a verification whose provider is down
    key = key_in_state(S.PENDING, provider=make_provider("deepseek", base_url=dead_url))
    countdowns = []
    for attempt in range(MAX_RETRIES):
        provider_key_verify_task.push_request(retries=attempt, is_eager=False, called_directly=False)
        try:
            with mock.patch.object(provider_key_verify_task, "retry", return_value=RuntimeError("retry")) as retry:
                with pytest.raises(RuntimeError, match="retry"):
                    provider_key_verify_task.run(key.pk)
        finally:
            provider_key_verify_task.pop_request()
        countdowns.append(retry.call_args.kwargs["countdown"])
    # then each retry waits twice as long as the one before
    assert countdowns == [30, 60, 120, 240, 480]
    assert retry_countdown(20) == 1800


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_upstream_errors_are_retried_until_the_provider_answers(status, make_provider, fake):
    secret = new_secret()
    fake.script(secret, status=status, retry_after=1 if status == 429 else None, times=2)
    key = enrol(UserFactory(), make_provider("siliconflow"), secret=secret, byok=True)
    assert key.status == S.ACTIVE
    assert fake.count(secret) == 3


def test_out_of_funds_402_counts_as_authenticated_but_exhausted(make_provider, fake):
    secret = new_secret()
    fake.script(secret, status=402)
    key = enrol(UserFactory(), make_provider("none"), secret=secret, byok=True)
    assert key.status == S.EXHAUSTED
    assert key.last_error == "the provider reports no usable balance"


def test_a_redirect_is_not_followed(make_provider, fake):
    secret = new_secret()
    fake.script(secret, status=302)
    key = enrol(UserFactory(), make_provider("none"), secret=secret, byok=True)
    assert key.status == S.FAILED
    assert "redirect" in key.last_error
    assert fake.count() == 1


def test_openrouter_key_without_a_limit_reads_the_account_credits(make_provider, fake):
    secret = new_secret()
    fake.script(secret, balance=Decimal("3.50"), unlimited=True)
    key = enrol(UserFactory(), make_provider("openrouter"), secret=secret, exchange=True)
    assert key.status == S.ACTIVE
    assert key.verified_balance == 3_500_000_000
    assert [r.path for r in fake.requests] == ["/v1/key", "/v1/credits"]


def test_a_cny_balance_is_converted_with_the_configured_rate(make_provider, fake, settings):
    settings.HEADROOM_FX_RATES = {"CNY": "0.14"}
    secret = new_secret()
    fake.script(secret, balance=Decimal("100.00"), currency="CNY")
    key = enrol(UserFactory(), make_provider("deepseek", balance_currency="CNY"), secret=secret, exchange=True)
    assert key.status == S.ACTIVE
    assert key.verified_balance == 14_000_000_000


def test_a_balance_in_a_currency_without_a_rate_cannot_back_the_exchange(make_provider, fake, settings):
    settings.HEADROOM_FX_RATES = {}
    provider = make_provider("moonshot", balance_currency="CNY")
    byok_only, exchange = new_secret(), new_secret()
    assert enrol(UserFactory(), provider, secret=byok_only, byok=True).status == S.ACTIVE
    key = enrol(UserFactory(), provider, secret=exchange, exchange=True)
    assert key.status == S.EXHAUSTED
    assert key.verified_balance is None
    assert key.last_error == "the provider reports the balance in CNY, which has no configured exchange rate"


def test_a_private_upstream_is_refused_at_call_time_when_not_allowed(make_provider, fake, settings):
    provider = make_provider("deepseek")  # saved while private upstreams were allowed
    settings.HEADROOM_ALLOW_PRIVATE_UPSTREAMS = False
    key = enrol(UserFactory(), provider, byok=True)
    assert key.status == S.FAILED
    assert key.last_error == "The base URL must use https."
    assert fake.count() == 0


def test_verification_is_idempotent(make_provider, fake):
    key = enrol(UserFactory(), make_provider("deepseek"), byok=True)
    assert key.status == S.ACTIVE
    fake.reset()
    provider_key_verify_task.delay(key.pk)
    provider_key_verify_task.delay(999_999)
    assert fake.count() == 0
    key.refresh_from_db()
    assert key.status == S.ACTIVE and key.transitions.count() == 2


def test_a_key_removed_during_its_verification_is_left_alone(make_provider, fake):
    from keys.services import provider_key_deactivate

    key = key_in_state(S.PENDING, provider=make_provider("none"))
    real_check = verification.provider_key_check

    def check_then_remove(**kwargs):
        result = real_check(**kwargs)
        provider_key_deactivate(key=key, actor=key.owner_user, remove=True)
        return result

    with mock.patch.object(verification, "provider_key_check", side_effect=check_then_remove):
        assert verification.provider_key_verify(key_id=key.pk) == "skipped"
    key.refresh_from_db()
    assert key.status == S.INACTIVE and not key.has_secret


# --- periodic re-verification of exchange keys -----------------------------------------------------


@pytest.mark.parametrize("kind", BALANCE_KINDS)
def test_reverify_updates_the_balance_and_exhausts_below_ten_cents(kind, make_provider, fake):
    secret = new_secret()
    key = enrol(UserFactory(), make_provider(kind), secret=secret, exchange=True)
    fake.script(secret, balance=Decimal("5.00"))
    provider_key_reverify_exchange_task.delay(key.pk)
    key.refresh_from_db()
    assert (key.status, key.verified_balance) == (S.ACTIVE, 5_000_000_000)

    fake.script(secret, balance=Decimal("0.01"))
    provider_key_reverify_exchange_task.delay(key.pk)
    key.refresh_from_db()
    assert key.status == S.EXHAUSTED
    assert key.last_error == "exchange balance $0.01 is below the $0.10 minimum"


@pytest.mark.parametrize(
    ("script", "expected_status", "expected_error"),
    [
        ({"status": 401}, S.EXHAUSTED, "the provider rejected the key (HTTP 401)"),
        ({"malformed_balance": True}, S.EXHAUSTED, "the provider's balance reply could not be read"),
        ({"status": 500}, S.ACTIVE, "the provider is having trouble (HTTP 500)"),
    ],
)
def test_reverify_fails_closed_but_rides_out_an_outage(script, expected_status, expected_error, make_provider, fake):
    secret = new_secret()
    key = enrol(UserFactory(), make_provider("deepseek"), secret=secret, exchange=True)
    fake.script(secret, **script)
    provider_key_reverify_exchange_task.delay(key.pk)
    key.refresh_from_db()
    assert key.status == expected_status
    assert key.last_error.startswith(expected_error)


def test_reverify_skips_keys_that_are_not_active_exchange_keys(make_provider, fake):
    byok = enrol(UserFactory(), make_provider("deepseek"), byok=True)
    fake.reset()
    provider_key_reverify_exchange_task.delay(byok.pk)
    assert fake.count() == 0


# --- probing paused keys ---------------------------------------------------------------------------


def _paused(provider, secret, **fields):
    return key_in_state(S.PAUSED, provider=provider, secret=secret, consecutive_429s=3, **fields)


def test_a_paused_key_is_probed_after_retry_after_and_resumes(make_provider, fake):
    secret = new_secret()
    key = _paused(make_provider("none"), secret, retry_after_until=timezone.now() + timedelta(minutes=5))
    provider_key_probe_task.delay(key.pk)
    assert fake.count() == 0  # not due yet
    ProviderKey.objects.filter(pk=key.pk).update(retry_after_until=timezone.now() - timedelta(seconds=1))
    provider_key_probe_task.delay(key.pk)
    key.refresh_from_db()
    assert key.status == S.ACTIVE
    assert key.consecutive_429s == 0 and key.retry_after_until is None
    assert _reasons(key) == [(S.PAUSED, S.ACTIVE, "probe succeeded")]


def test_a_paused_key_without_retry_after_waits_the_default_before_its_probe(make_provider, fake, settings):
    settings.HEADROOM_PROBE_PAUSED_AFTER = 60
    key = _paused(make_provider("none"), new_secret())
    provider_key_probe_task.delay(key.pk)
    assert fake.count() == 0
    ProviderKey.objects.filter(pk=key.pk).update(status_changed_at=timezone.now() - timedelta(seconds=61))
    provider_key_probe_task.delay(key.pk)
    key.refresh_from_db()
    assert key.status == S.ACTIVE


def test_a_probe_that_is_rate_limited_again_keeps_the_key_paused_until_the_new_retry_after(make_provider, fake):
    secret = new_secret()
    fake.script(secret, status=429, retry_after=120)
    key = _paused(make_provider("none"), secret, retry_after_until=timezone.now() - timedelta(seconds=1))
    provider_key_probe_task.delay(key.pk)
    key.refresh_from_db()
    assert key.status == S.PAUSED
    assert timezone.now() + timedelta(seconds=110) < key.retry_after_until < timezone.now() + timedelta(seconds=130)
    assert key.last_error == "the provider is rate limiting the key (HTTP 429)"


def test_a_probe_of_an_exchange_key_that_ran_dry_resumes_it_and_then_exhausts_it(make_provider, fake):
    secret = new_secret()
    fake.script(secret, balance=Decimal("0.02"))
    key = _paused(make_provider("moonshot"), secret, exchange=True, retry_after_until=timezone.now())
    provider_key_probe_task.delay(key.pk)
    key.refresh_from_db()
    assert key.status == S.EXHAUSTED
    assert [t[:2] for t in _reasons(key)] == [(S.PAUSED, S.ACTIVE), (S.ACTIVE, S.EXHAUSTED)]
