"""Enrolment rules and flag changes of provider keys, through keys.services."""

import pytest
from django.test import TestCase

from accounts.models import Membership
from accounts.services import organization_create
from exchange.models import PayoutRateRule
from exchange.services import payout_rate_global_set
from keys.crypto import decrypt_secret, secret_fingerprint
from keys.models import (
    PoolConsent,
    Provider,
    ProviderKey,
    ProviderKeyStats,
    ProviderKeyTransition,
)
from keys.selectors import provider_key_pool_candidates, provider_key_user_in_pool
from keys.services import (
    POOL_CONSENT_VERSION,
    ProviderKeyError,
    provider_key_create,
    provider_key_deactivate,
    provider_key_in_flight,
    provider_key_release,
    provider_key_secret,
    provider_key_update,
    provider_set_clearance,
)
from tests.accounts.factories import UserFactory
from tests.keys.factories import (
    ProviderFactory,
    enrol,
    key_in_state,
    new_secret,
    verify_email,
)

pytestmark = pytest.mark.django_db
S = ProviderKey.Status


def _create(owner, provider, secret, **kwargs):
    kwargs.setdefault("actor", owner)
    with TestCase.captureOnCommitCallbacks(execute=False) as callbacks:
        key = provider_key_create(owner=owner, provider=provider, secret=secret, **kwargs)
    return key, callbacks


def test_create_encrypts_masks_fingerprints_and_enqueues_verification_by_id():
    user, provider = UserFactory(), ProviderFactory()
    secret = new_secret()
    key, callbacks = _create(user, provider, secret, label="mine", byok=True)
    key.refresh_from_db()
    assert key.status == S.PENDING
    assert key.masked == "…" + secret[-4:]
    assert secret not in key.secret_ciphertext and decrypt_secret(key.secret_ciphertext) == secret
    assert provider_key_secret(key=key) == secret
    assert key.fingerprint == secret_fingerprint(secret) and len(key.fingerprint) == 64
    assert ProviderKeyStats.objects.filter(key=key).exists()
    assert list(key.transitions.values_list("from_status", "to_status", "actor", "reason")) == [
        (S.PENDING, S.PENDING, user.pk, "enrolled")
    ]
    assert len(callbacks) == 1  # the verification, after commit
    assert secret not in str(key) and secret[-4:] in str(key)


def test_surrounding_whitespace_of_a_pasted_secret_is_dropped():
    user, provider = UserFactory(), ProviderFactory()
    secret = new_secret()
    key, _ = _create(user, provider, f"  {secret}\n")
    assert provider_key_secret(key=key) == secret


@pytest.mark.parametrize(
    "secret",
    ["short-secret", "sk-" + "a" * 600, "sk-with a-space-inside-123456", "sk-ünicode-0123456789abcdef", "", None, 1234],
)
def test_malformed_secrets_are_refused(secret):
    with pytest.raises(ProviderKeyError, match="invalid secret") as refused:
        _create(UserFactory(), ProviderFactory(), secret)
    assert refused.value.code == "invalid_secret"
    assert not ProviderKey.objects.exists()


def test_the_same_secret_cannot_be_enrolled_twice_by_anyone():
    alice, bob, provider = UserFactory(), UserFactory(), ProviderFactory()
    org = organization_create(owner=bob, name="Bob Co")
    secret = new_secret()
    _create(alice, provider, secret)
    for owner, actor, other_provider in ((alice, alice, provider), (bob, bob, provider), (org, bob, ProviderFactory())):
        with pytest.raises(ProviderKeyError, match="duplicate key") as refused:
            _create(owner, other_provider, secret, actor=actor)
        assert refused.value.code == "duplicate_key" and refused.value.status_code == 409
    with pytest.raises(ProviderKeyError, match="duplicate key"):
        provider_key_create(owner=None, provider=provider, secret=secret, actor=None)
    assert ProviderKey.objects.count() == 1


def test_a_deactivated_key_still_holds_its_secret_and_blocks_re_enrolment_until_removed():
    user, provider = UserFactory(), ProviderFactory()
    secret = new_secret()
    key, _ = _create(user, provider, secret)
    provider_key_deactivate(key=key, actor=user)
    with pytest.raises(ProviderKeyError, match="duplicate key"):
        _create(user, provider, secret)
    provider_key_deactivate(key=key, actor=user, remove=True)
    again, _ = _create(user, provider, secret)
    assert again.pk != key.pk


def test_an_inactive_provider_takes_no_keys():
    provider = ProviderFactory(is_active=False)
    with pytest.raises(ProviderKeyError, match="provider unavailable"):
        _create(UserFactory(), provider, new_secret())


# --- donating to the pool --------------------------------------------------------------------------


def test_donating_needs_consent_once_and_records_who_when_and_which_text():
    user, provider = UserFactory(), ProviderFactory()
    verify_email(user)
    with pytest.raises(ProviderKeyError, match="consent required") as refused:
        _create(user, provider, new_secret(), donate_to_pool=True)
    assert refused.value.code == "consent_required"
    assert not ProviderKey.objects.exists() and not PoolConsent.objects.exists()

    first, _ = _create(user, provider, new_secret(), donate_to_pool=True, consent=True)
    consent = PoolConsent.objects.get()
    assert (consent.user, consent.consent_version, consent.key) == (user, POOL_CONSENT_VERSION, first)
    assert consent.accepted_at is not None
    first.refresh_from_db()
    assert first.donate_to_pool and first.donated_at is not None

    # one-time: the next donation needs no new consent and writes no second record
    _create(user, provider, new_secret(), donate_to_pool=True)
    _create(user, provider, new_secret(), donate_to_pool=True, consent=True)
    assert PoolConsent.objects.count() == 1


def test_donating_needs_a_verified_email():
    user = UserFactory(verified=False)
    with pytest.raises(ProviderKeyError, match="verified e-mail required") as refused:
        _create(user, ProviderFactory(), new_secret(), donate_to_pool=True, consent=True)
    assert refused.value.code == "email_unverified"
    assert not PoolConsent.objects.exists()


def test_keys_of_an_excluded_provider_cannot_be_donated():
    user = UserFactory()
    verify_email(user)
    provider = ProviderFactory(pool_clearance=Provider.PoolClearance.EXCLUDED)
    with pytest.raises(ProviderKeyError, match="provider excluded from the pool"):
        _create(user, provider, new_secret(), donate_to_pool=True, consent=True)
    key, _ = _create(user, provider, new_secret(), byok=True)  # other uses stay possible
    with pytest.raises(ProviderKeyError, match="provider excluded from the pool"):
        provider_key_update(key=key, actor=user, donate_to_pool=True, consent=True)


def test_a_donated_key_of_a_pending_provider_waits_and_joins_when_the_provider_is_cleared():
    user = UserFactory()
    provider = ProviderFactory(pool_clearance=Provider.PoolClearance.PENDING)
    verify_email(user)
    key = key_in_state(S.ACTIVE, owner=user, provider=provider, donate_to_pool=True)
    assert not provider_key_pool_candidates().filter(pk=key.pk).exists()
    assert not provider_key_user_in_pool(user=user)

    assert provider_set_clearance(provider=provider, clearance=Provider.PoolClearance.CLEARED) == 1
    assert provider_key_pool_candidates().filter(pk=key.pk).exists()
    assert provider_key_user_in_pool(user=user)

    provider_set_clearance(provider=provider, clearance=Provider.PoolClearance.EXCLUDED)
    assert not provider_key_pool_candidates().exists()


def test_only_active_donated_keys_with_a_secret_are_pool_candidates():
    provider = ProviderFactory()
    for state in S.values:
        key_in_state(state, provider=provider, donate_to_pool=True)
    key_in_state(S.ACTIVE, provider=provider, donate_to_pool=False)
    assert list(provider_key_pool_candidates().values_list("status", flat=True)) == [S.ACTIVE]


# --- the exchange ----------------------------------------------------------------------------------


def test_exchange_needs_a_provider_with_a_balance_api():
    with pytest.raises(ProviderKeyError, match="exchange not supported") as refused:
        _create(UserFactory(), ProviderFactory(balance_api="none"), new_secret(), exchange=True)
    assert refused.value.code == "exchange_unsupported"


def test_exchange_is_refused_while_the_global_payout_rate_is_zero():
    # given the operator's global 0% switch (the exchange app's rule, which keys asks through its registry)
    PayoutRateRule.objects.create(percent=0)
    # then no key of any member is listed on the exchange
    with pytest.raises(ProviderKeyError, match="exchange closed") as refused:
        _create(UserFactory(), ProviderFactory(balance_api="deepseek"), new_secret(), exchange=True)
    assert refused.value.code == "exchange_closed"


def test_exchange_is_refused_when_the_owners_payout_rate_is_zero():
    user, provider = UserFactory(), ProviderFactory(balance_api="deepseek")
    PayoutRateRule.objects.create(user=user, provider=provider, percent=0)
    with pytest.raises(ProviderKeyError, match="exchange disabled") as refused:
        _create(user, provider, new_secret(), exchange=True)
    assert refused.value.code == "exchange_disabled"
    # another member is not affected by that user's rule
    other = UserFactory()
    key, _ = _create(other, provider, new_secret(), exchange=True)
    assert key.exchange and key.exchange_listed_at is not None


def test_exchange_is_refused_while_the_global_rate_is_zero():
    payout_rate_global_set(percent="0")
    with pytest.raises(ProviderKeyError, match="exchange closed"):
        _create(UserFactory(), ProviderFactory(balance_api="moonshot"), new_secret(), exchange=True)


def test_listing_an_active_key_on_the_exchange_needs_a_verified_balance_of_ten_cents():
    user, provider = UserFactory(), ProviderFactory(balance_api="openrouter")
    low = key_in_state(S.ACTIVE, owner=user, provider=provider, verified_balance=99_999_999)
    with pytest.raises(ProviderKeyError, match=r"at least \$0.10; this key has \$0.099999999") as refused:
        provider_key_update(key=low, actor=user, exchange=True)
    assert refused.value.code == "balance_too_low"
    unknown = key_in_state(S.ACTIVE, owner=user, provider=provider, verified_balance=None)
    with pytest.raises(ProviderKeyError, match="no verified balance"):
        provider_key_update(key=unknown, actor=user, exchange=True)
    enough = key_in_state(S.ACTIVE, owner=user, provider=provider, verified_balance=100_000_000)
    provider_key_update(key=enough, actor=user, exchange=True)
    enough.refresh_from_db()
    assert enough.exchange


# --- owners, platform keys, flags ------------------------------------------------------------------


def test_platform_keys_have_no_owner_and_no_member_flags():
    provider = ProviderFactory()
    key = provider_key_create(owner=None, provider=provider, secret=new_secret(), actor=None)
    assert key.is_platform and key.owner_user is None and key.owner_org is None
    with pytest.raises(ProviderKeyError, match="platform keys"):
        provider_key_create(owner=None, provider=provider, secret=new_secret(), byok=True, actor=None)
    with pytest.raises(ProviderKeyError, match="platform keys"):
        provider_key_update(key=key, actor=None, exchange=True)


def test_organization_keys_are_managed_by_its_owners_only():
    boss, member = UserFactory(), UserFactory()
    org = organization_create(owner=boss, name="Acme")
    Membership.objects.create(organization=org, user=member, role=Membership.Role.MEMBER)
    provider = ProviderFactory()
    with pytest.raises(ProviderKeyError, match="organization owner required") as refused:
        _create(org, provider, new_secret(), actor=member)
    assert refused.value.status_code == 403
    key, _ = _create(org, provider, new_secret(), actor=boss)
    assert key.owner_org == org and key.owner_user is None
    with pytest.raises(ProviderKeyError, match="organization owner required"):
        provider_key_update(key=key, actor=member, label="mine now")
    with pytest.raises(ProviderKeyError, match="organization owner required"):
        provider_key_deactivate(key=key, actor=member)


def test_flag_changes_are_audited_with_the_actor():
    user, provider = UserFactory(), ProviderFactory()
    verify_email(user)
    key = key_in_state(S.ACTIVE, owner=user, provider=provider, byok=True)
    provider_key_update(key=key, actor=user, label="renamed", byok=False, donate_to_pool=True, consent=True)
    provider_key_update(key=key, actor=user, donate_to_pool=False)
    provider_key_update(key=key, actor=user, label="renamed")  # no change, no row
    key.refresh_from_db()
    assert key.label == "renamed" and not key.byok and not key.donate_to_pool and key.donated_at is None
    rows = list(
        ProviderKeyTransition.objects.filter(key=key).values_list("from_status", "to_status", "actor", "reason")
    )
    assert rows == [
        (S.ACTIVE, S.ACTIVE, user.pk, "byok off; donate_to_pool on"),
        (S.ACTIVE, S.ACTIVE, user.pk, "donate_to_pool off"),
    ]


@pytest.mark.parametrize("state", [S.DISABLING, S.INACTIVE])
def test_a_retiring_key_cannot_be_changed(state):
    key = key_in_state(state)
    with pytest.raises(ProviderKeyError, match=f"key {state}"):
        provider_key_update(key=key, actor=key.owner_user, byok=True)


def test_release_ends_one_requests_lease_and_only_that():
    key = key_in_state(S.ACTIVE, in_flight=2)
    assert provider_key_in_flight(key_id=key.pk) == 2
    provider_key_release(key_id=key.pk, request_id=f"req_in_flight_{key.pk}_0")
    provider_key_release(key_id=key.pk, request_id=f"req_in_flight_{key.pk}_0")  # already ended: nothing
    assert provider_key_in_flight(key_id=key.pk) == 1


def test_enrolment_end_to_end_verifies_the_key_against_the_fake_provider(make_provider):
    user = UserFactory()
    key = enrol(user, make_provider("none"), byok=True)
    assert key.status == S.ACTIVE
    assert key.verified_at is not None and key.last_error == ""
