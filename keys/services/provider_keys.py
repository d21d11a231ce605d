"""Writes for provider keys: enrolment, flags, the owner's state moves and the gateway's hot-path
counters.

Every state move goes through `provider_key_transition` (lock the row, ask the FSM declared on
`ProviderKey`, save, write a `ProviderKeyTransition`), except the two the gateway triggers on the
request path (pause after N 429s, exhaust after N failures): those are conditional UPDATEs
(`… WHERE status = 'active'`), so two processes that cross the threshold together move the key
exactly once and only the winner writes the audit row. Their source and target are read from the FSM declarations, so the
machine is still declared in one place.

Side effects (verification, draining) are Celery tasks enqueued with `transaction.on_commit`, and
take key ids only.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables
from django_fsm import can_proceed

from accounts.models import Membership, Organization, User
from core.money import format_usd, parse_usd, usd_str
from core.errors import ServiceError
from core.masking import secret_tail
from keys.crypto import decrypt_secret, encrypt_secret, secret_fingerprint
from keys.models import (
    PoolConsent,
    Provider,
    ProviderKey,
    ProviderKeyLease,
    ProviderKeyStats,
    ProviderKeyTransition,
)
from keys.selectors import pool_consent_for_user

logger = logging.getLogger(__name__)

Status = ProviderKey.Status

POOL_CONSENT_VERSION = "2026-11-v1"
POOL_CONSENT_TEXT = (
    "I donate this provider key to the Headroom shared pool. Other members' requests to pool models may be "
    "sent to the provider with it, billed by the provider to my account with them. In return my Headroom "
    "balance is credited 5% of the notional cost of each request served. I can stop donating at any time; "
    "requests already in flight finish. I have checked that the provider's terms allow this use."
)

SECRET_MIN_LENGTH = 16
SECRET_MAX_LENGTH = 512
LAST_ERROR_LENGTH = 200

KEY_SECRET_INVALID = "invalid secret: a provider key is 16 to 512 printable characters without spaces."
KEY_DUPLICATE = "duplicate key: this secret is already enrolled."
KEY_PROVIDER_INACTIVE = "provider unavailable: {provider} is not accepting keys."
KEY_CONSENT_REQUIRED = (
    "consent required: donating a key to the pool needs your one-time consent to the pool terms "
    "(tick the consent box, or send consent: true through the API)."
)
KEY_EMAIL_UNVERIFIED = "verified e-mail required: confirm your e-mail address before donating a key to the pool."
KEY_PROVIDER_EXCLUDED = "provider excluded from the pool: {provider} keys cannot be donated."
KEY_EXCHANGE_UNSUPPORTED = "exchange not supported: {provider} has no balance API to verify a key against."
KEY_EXCHANGE_BALANCE_LOW = (
    "balance too low: the exchange needs a verified provider balance of at least {minimum}; this key has {balance}."
)
KEY_PLATFORM_FLAGS = "platform keys serve pay-as-you-go traffic only: byok, donate_to_pool and exchange stay off."
KEY_NOT_ORG_OWNER = "organization owner required: only an organization's owners manage its provider keys."
KEY_RETIRED = "key {status}: a key that is being disabled or inactive cannot be changed."
KEY_MOVE_REFUSED = "cannot {verb} a key that is {status}."

# Reasons written to the audit trail and `last_error`: our own words, never a provider's body.
REASON_ENROLLED = "enrolled"
REASON_PAUSED_429 = "{count} consecutive upstream 429s"
REASON_EXHAUSTED_FAILURES = "{count} consecutive upstream failures"
REASON_DRAINED = "no request in flight"
REASON_DRAIN_TIMEOUT = "in-flight count did not drain within {seconds}s; forced"
REASON_SCRUBBED = "secret scrubbed after removal"


class ProviderKeyError(ServiceError):
    """A refused key operation. `message` is safe to show; `code` is stable for clients."""


KeyOwner = User | Organization | None  # None: the platform


@dataclass(frozen=True)
class Move:
    source: tuple[str, ...]
    target: str


def fsm_move(name: str) -> Move:
    """The sources and target of one transition declared on ProviderKey (the single declaration)."""
    declared = ProviderKey._meta.get_field("status").get_all_transitions(ProviderKey)
    transitions = [t for t in declared if t.name == name]
    if not transitions or len({t.target for t in transitions}) != 1:
        raise LookupError(f"ProviderKey declares no single-target transition {name!r}")
    return Move(source=tuple(t.source for t in transitions), target=transitions[0].target)


def exchange_min_balance() -> int:
    return parse_usd(settings.HEADROOM_EXCHANGE_MIN_BALANCE)


def safe_reason(text: str) -> str:
    """Audit/last_error text: one line, bounded. Callers pass our own words, never upstream bodies."""
    return " ".join(str(text).split())[:LAST_ERROR_LENGTH]


@sensitive_variables("secret")
def _clean_secret(secret: object) -> str:
    if not isinstance(secret, str):
        raise ProviderKeyError(KEY_SECRET_INVALID, code="invalid_secret")
    secret = secret.strip()
    if not SECRET_MIN_LENGTH <= len(secret) <= SECRET_MAX_LENGTH or not all(33 <= ord(c) <= 126 for c in secret):
        raise ProviderKeyError(KEY_SECRET_INVALID, code="invalid_secret")
    return secret


def _audit(*, key_id: int, before: str, after: str, actor: User | None, reason: str) -> None:
    ProviderKeyTransition.objects.create(
        key_id=key_id, from_status=before, to_status=after, actor=actor, reason=safe_reason(reason)
    )


def provider_key_lock(*, key_id: int) -> ProviderKey:
    """The key row, locked. Caller is inside transaction.atomic()."""
    return ProviderKey.objects.select_for_update(of=("self",)).select_related("provider").get(pk=key_id)


def provider_key_transition(
    *, key: ProviderKey, name: str, actor: User | None, reason: str, extra_fields: tuple[str, ...] = ()
) -> None:
    """Run transition `name` on a locked, fresh key and audit it. Caller holds the row lock."""
    method = getattr(key, name)
    if not can_proceed(method):
        raise ProviderKeyError(KEY_MOVE_REFUSED.format(verb=name, status=key.status), code="illegal_transition")
    before = key.status
    method()
    key.status_changed_at = timezone.now()
    key.save(update_fields=["status", "status_changed_at", "updated_at", *extra_fields])
    _audit(key_id=key.pk, before=before, after=key.status, actor=actor, reason=reason)


def _enqueue(task_name: str, key_id: int) -> None:
    """Enqueue a keys task by id once the current transaction commits. With the broker (Redis) down
    the change stands and the task is left to beat's sweep, which enqueues it again for every PENDING
    key older than HEADROOM_PENDING_RECHECK_AFTER and every DISABLING key (provider_keys_sweep_task):
    the request that made the change still succeeds."""
    from kombu.exceptions import OperationalError as BrokerUnavailable

    from keys import tasks

    task = getattr(tasks, task_name)

    def send() -> None:
        try:
            task.delay(key_id)
        except BrokerUnavailable as error:
            logger.warning("%s for key %s not enqueued, left to the sweep: broker unavailable (%s)", task_name,
                           key_id, error.__class__.__name__)

    transaction.on_commit(send)


def _require_org_owner(*, organization: Organization, actor: User | None) -> None:
    if actor is None or not Membership.objects.filter(
        organization=organization, user=actor, role=Membership.Role.OWNER
    ).exists():
        raise ProviderKeyError(KEY_NOT_ORG_OWNER, code="not_org_owner", status_code=403)


def _has_verified_email(user: User) -> bool:
    from allauth.account.models import EmailAddress

    return EmailAddress.objects.filter(user=user, verified=True).exists()


def _check_donation(*, provider: Provider, actor: User | None, consent: bool) -> bool:
    """Refuse a donation that breaks a rule; returns whether a consent record must be written."""
    if provider.pool_clearance == Provider.PoolClearance.EXCLUDED:
        raise ProviderKeyError(KEY_PROVIDER_EXCLUDED.format(provider=provider.name), code="provider_excluded")
    if actor is None or not _has_verified_email(actor):
        raise ProviderKeyError(KEY_EMAIL_UNVERIFIED, code="email_unverified")
    if pool_consent_for_user(user=actor, version=POOL_CONSENT_VERSION) is not None:
        return False
    if not consent:
        raise ProviderKeyError(KEY_CONSENT_REQUIRED, code="consent_required")
    return True


def _consent_record(*, user: User, key: ProviderKey) -> None:
    """The one-time consent (get_or_create: a concurrent donation may have just written it)."""
    PoolConsent.objects.get_or_create(user=user, consent_version=POOL_CONSENT_VERSION, defaults={"key": key})


# Rules a key must also pass to be listed on the exchange, owned by apps above keys: the exchange app
# registers its own (the exchange is open; the owner's payout rate is above 0%) from its AppConfig.ready,
# so keys can refuse a listing without importing the app that sets the rates.
ExchangeCheck = Callable[..., "ProviderKeyError | None"]
_exchange_checks: list[ExchangeCheck] = []


def exchange_check_register(check: ExchangeCheck) -> None:
    """Add `check(*, provider, owner_user) -> ProviderKeyError | None` to every exchange listing."""
    if check not in _exchange_checks:
        _exchange_checks.append(check)


def exchange_refusal(*, provider: Provider, owner_user: User | None) -> ProviderKeyError | None:
    """Why a key of this provider and owner may not be listed on the exchange now, or None."""
    if not (provider.exchange_supported and provider.has_balance_api):
        return ProviderKeyError(KEY_EXCHANGE_UNSUPPORTED.format(provider=provider.name), code="exchange_unsupported")
    for check in _exchange_checks:
        refusal = check(provider=provider, owner_user=owner_user)
        if refusal is not None:
            return refusal
    return None


def _check_exchange(*, key: ProviderKey) -> None:
    refusal = exchange_refusal(provider=key.provider, owner_user=key.owner_user)
    if refusal:
        raise refusal
    # A key still PENDING is checked by its verification; an ACTIVE one by its last verified balance.
    if key.status == Status.ACTIVE:
        minimum = exchange_min_balance()
        balance = key.verified_balance
        if balance is None or balance < minimum:
            shown = "no verified balance" if balance is None else f"${usd_str(balance)}"
            raise ProviderKeyError(
                KEY_EXCHANGE_BALANCE_LOW.format(minimum=format_usd(minimum), balance=shown), code="balance_too_low"
            )


@sensitive_variables("secret")
def provider_key_check_enrolable(*, provider: Provider, secret: str) -> tuple[str, str]:
    """(cleaned secret, fingerprint) if the secret may be enrolled for this provider, else refuse."""
    secret = _clean_secret(secret)
    if not provider.is_active:
        raise ProviderKeyError(KEY_PROVIDER_INACTIVE.format(provider=provider.name), code="provider_inactive")
    fingerprint = secret_fingerprint(secret)
    if ProviderKey.objects.filter(fingerprint=fingerprint).exclude(secret_ciphertext="").exists():
        raise ProviderKeyError(KEY_DUPLICATE, code="duplicate_key", status_code=409)
    return secret, fingerprint


@sensitive_variables("secret")
def provider_key_create(
    *,
    owner: KeyOwner,
    provider: Provider,
    secret: str,
    label: str = "",
    byok: bool = False,
    donate_to_pool: bool = False,
    exchange: bool = False,
    consent: bool = False,
    actor: User | None,
) -> ProviderKey:
    """Enrol a key (PENDING) and enqueue its verification.

    `owner` is a user, an organization (actor must be one of its owners) or None for a platform key
    (operators only: the admin and `add_platform_key`). The secret is stored encrypted; the returned
    object never carries it in plain text.
    """
    secret, fingerprint = provider_key_check_enrolable(provider=provider, secret=secret)
    owner_user = owner if isinstance(owner, User) else None
    owner_org = owner if isinstance(owner, Organization) else None
    is_platform = owner is None
    if is_platform and (byok or donate_to_pool or exchange):
        raise ProviderKeyError(KEY_PLATFORM_FLAGS, code="platform_flags")
    if owner_org is not None:
        _require_org_owner(organization=owner_org, actor=actor)
    write_consent = _check_donation(provider=provider, actor=actor, consent=consent) if donate_to_pool else False
    if exchange:
        refusal = exchange_refusal(provider=provider, owner_user=owner_user)
        if refusal:
            raise refusal

    now = timezone.now()
    try:
        with transaction.atomic():
            key = ProviderKey.objects.create(
                owner_user=owner_user,
                owner_org=owner_org,
                is_platform=is_platform,
                provider=provider,
                label=label.strip()[:100],
                secret_ciphertext=encrypt_secret(secret),
                fingerprint=fingerprint,
                secret_last4=secret_tail(secret),
                byok=byok,
                donate_to_pool=donate_to_pool,
                donated_at=now if donate_to_pool else None,
                exchange=exchange,
                exchange_listed_at=now if exchange else None,
            )
            ProviderKeyStats.objects.create(key=key)
            if write_consent:
                _consent_record(user=actor, key=key)
            _audit(key_id=key.pk, before=Status.PENDING, after=Status.PENDING, actor=actor, reason=REASON_ENROLLED)
            _enqueue("provider_key_verify_task", key.pk)
    except IntegrityError:
        # Lost a race with an enrolment of the same secret (the conditional unique constraint)?
        if ProviderKey.objects.filter(fingerprint=fingerprint).exclude(secret_ciphertext="").exists():
            raise ProviderKeyError(KEY_DUPLICATE, code="duplicate_key", status_code=409) from None
        raise
    return key


def provider_key_update(
    *,
    key: ProviderKey,
    actor: User | None,
    label: str | None = None,
    byok: bool | None = None,
    donate_to_pool: bool | None = None,
    exchange: bool | None = None,
    consent: bool = False,
) -> ProviderKey:
    """Change a key's label and flags; every flag change is audited. None leaves a field as it is."""
    with transaction.atomic():
        key = provider_key_lock(key_id=key.pk)
        if key.status in (Status.DISABLING, Status.INACTIVE):
            raise ProviderKeyError(KEY_RETIRED.format(status=key.status), code="key_retired")
        if key.owner_org_id is not None:
            _require_org_owner(organization=key.owner_org, actor=actor)
        if key.is_platform and (byok or donate_to_pool or exchange):
            raise ProviderKeyError(KEY_PLATFORM_FLAGS, code="platform_flags")
        now = timezone.now()
        changes: list[str] = []
        fields: list[str] = []
        if label is not None and label.strip()[:100] != key.label:
            key.label = label.strip()[:100]
            fields.append("label")
        if byok is not None and byok != key.byok:
            key.byok = byok
            fields.append("byok")
            changes.append(f"byok {'on' if byok else 'off'}")
        if donate_to_pool is not None and donate_to_pool != key.donate_to_pool:
            if donate_to_pool and _check_donation(provider=key.provider, actor=actor, consent=consent):
                _consent_record(user=actor, key=key)
            key.donate_to_pool = donate_to_pool
            key.donated_at = now if donate_to_pool else None
            fields += ["donate_to_pool", "donated_at"]
            changes.append(f"donate_to_pool {'on' if donate_to_pool else 'off'}")
        if exchange is not None and exchange != key.exchange:
            if exchange:
                _check_exchange(key=key)
            key.exchange = exchange
            key.exchange_listed_at = now if exchange else None
            fields += ["exchange", "exchange_listed_at"]
            changes.append(f"exchange {'on' if exchange else 'off'}")
        if fields:
            key.save(update_fields=[*fields, "updated_at"])
        if changes:
            _audit(key_id=key.pk, before=key.status, after=key.status, actor=actor, reason="; ".join(changes))
    return key


def provider_key_deactivate(*, key: ProviderKey, actor: User | None, remove: bool = False) -> ProviderKey:
    """Owner deactivates (keeps the secret) or removes (scrubs it) a key: any live state → DISABLING,
    then INACTIVE as soon as no request is in flight (now, or by the drain task). Idempotent."""
    with transaction.atomic():
        key = provider_key_lock(key_id=key.pk)
        if key.owner_org_id is not None:
            _require_org_owner(organization=key.owner_org, actor=actor)
        reason = "removed by owner" if remove else "deactivated by owner"
        if remove and key.removed_at is None:
            key.removed_at = timezone.now()
            key.save(update_fields=["removed_at", "updated_at"])
        if key.status in ProviderKey.LIVE_STATES:
            provider_key_transition(key=key, name="disable", actor=actor, reason=reason)
        if key.status == Status.DISABLING and provider_key_in_flight(key_id=key.pk) == 0:
            provider_key_transition(key=key, name="retire", actor=actor, reason=REASON_DRAINED)
        if key.status == Status.INACTIVE and key.removed_at is not None and key.has_secret:
            _scrub(key, actor=actor)
        if key.status == Status.DISABLING:
            _enqueue("provider_key_drain_task", key.pk)
    return key


def _scrub(key: ProviderKey, *, actor: User | None) -> None:
    key.secret_ciphertext = ""
    key.fingerprint = ""
    key.save(update_fields=["secret_ciphertext", "fingerprint", "updated_at"])
    _audit(key_id=key.pk, before=key.status, after=key.status, actor=actor, reason=REASON_SCRUBBED)


def provider_key_drain(*, key_id: int) -> str:
    """DISABLING → INACTIVE once nothing is in flight (scrubbing a removed key's secret).

    The gateway writes a `ProviderKeyLease` in the same statement as its pick and deletes it when the
    request settles (or fails over to another key: `provider_key_release`). A process that dies
    mid-request would leave its lease behind, so after HEADROOM_DISABLING_TIMEOUT seconds (longer than
    any request may last) the key is retired anyway and such leases are dropped.
    Returns the key's status after the call.
    """
    timeout = timedelta(seconds=settings.HEADROOM_DISABLING_TIMEOUT)
    with transaction.atomic():
        try:
            key = provider_key_lock(key_id=key_id)
        except ProviderKey.DoesNotExist:
            return "missing"
        if key.status == Status.DISABLING:
            if provider_key_in_flight(key_id=key.pk) == 0:
                provider_key_transition(key=key, name="retire", actor=None, reason=REASON_DRAINED)
            elif timezone.now() - key.status_changed_at >= timeout:
                ProviderKeyLease.objects.filter(key_id=key.pk).delete()
                provider_key_transition(key=key, name="retire",
                    actor=None,
                    reason=REASON_DRAIN_TIMEOUT.format(seconds=int(timeout.total_seconds())),
                )
        if key.status == Status.INACTIVE and key.removed_at is not None and key.has_secret:
            _scrub(key, actor=None)
        return key.status


def provider_key_revalidate(*, key: ProviderKey, actor: User | None) -> ProviderKey:
    """EXHAUSTED | FAILED → PENDING, counters reset, verification enqueued."""
    with transaction.atomic():
        key = provider_key_lock(key_id=key.pk)
        if key.owner_org_id is not None:
            _require_org_owner(organization=key.owner_org, actor=actor)
        key.consecutive_429s = 0
        key.failure_count = 0
        key.last_error = ""
        provider_key_transition(key=key, name="revalidate",
            actor=actor,
            reason="revalidation requested",
            extra_fields=("consecutive_429s", "failure_count", "last_error"),
        )
        _enqueue("provider_key_verify_task", key.pk)
    return key


def provider_key_reactivate(
    *, key: ProviderKey, actor: User | None, reason: str = "reactivated by owner"
) -> ProviderKey:
    """PAUSED → ACTIVE: the owner (or a successful probe) says the quota is back."""
    with transaction.atomic():
        key = provider_key_lock(key_id=key.pk)
        if actor is not None and key.owner_org_id is not None:
            _require_org_owner(organization=key.owner_org, actor=actor)
        provider_key_resume_locked(key=key, actor=actor, reason=reason)
    return key


def provider_key_resume_locked(*, key: ProviderKey, actor: User | None, reason: str) -> None:
    key.consecutive_429s = 0
    key.failure_count = 0
    key.retry_after_until = None
    provider_key_transition(
        key=key,
        name="resume",
        actor=actor,
        reason=reason,
        extra_fields=("consecutive_429s", "failure_count", "retry_after_until"),
    )


# --- the gateway's calls (via sync_to_async): small, cheap, race-safe ------------------------------


@sensitive_variables()
def provider_key_secret(*, key: ProviderKey) -> str:
    """The plain secret, for the gateway's upstream call only. Raises SecretDecryptError when the
    configured keys cannot open it (fail closed: never returns ciphertext or an empty string)."""
    return decrypt_secret(key.secret_ciphertext)


def _count_and_move(*, key_id: int, counter: str, name: str, threshold: int, reason: str, **fields) -> bool:
    """Increment `counter` (and set `fields`), then move ACTIVE → the target of transition `name` if
    the counter reached `threshold`. The increment is atomic and the move a conditional UPDATE that
    only an ACTIVE row matches, so concurrent callers move the key exactly once; only the caller that
    moved it writes the audit row and gets True."""
    move = fsm_move(name)
    with transaction.atomic():
        ProviderKey.objects.filter(pk=key_id).update(**{counter: F(counter) + 1}, **fields)
        now = timezone.now()
        moved = ProviderKey.objects.filter(
            pk=key_id, status__in=move.source, **{f"{counter}__gte": threshold}
        ).update(status=move.target, status_changed_at=now, updated_at=now)
        if moved:
            _audit(key_id=key_id, before=move.source[0], after=move.target, actor=None, reason=reason)
    return bool(moved)


def provider_key_record_429(*, key_id: int, retry_after_seconds: float | None = None) -> bool:
    """Count an upstream 429 (and its Retry-After); at HEADROOM_PAUSE_AFTER_429S consecutive ones,
    ACTIVE → PAUSED exactly once even when processes cross the threshold together. Returns True for
    the caller that paused it."""
    threshold = settings.HEADROOM_PAUSE_AFTER_429S
    fields = {}
    if retry_after_seconds is not None and retry_after_seconds >= 0:
        fields["retry_after_until"] = timezone.now() + timedelta(seconds=min(float(retry_after_seconds), 86_400))
    return _count_and_move(
        key_id=key_id,
        counter="consecutive_429s",
        name="pause",
        threshold=threshold,
        reason=REASON_PAUSED_429.format(count=threshold),
        **fields,
    )


def provider_key_record_success(*, key_id: int) -> None:
    """Reset the consecutive-429 and failure counters; writes only when one of them is non-zero."""
    ProviderKey.objects.filter(Q(consecutive_429s__gt=0) | Q(failure_count__gt=0), pk=key_id).update(
        consecutive_429s=0, failure_count=0
    )


def provider_key_record_failure(*, key_id: int, reason: str) -> bool:
    """Count an upstream failure (5xx, timeout, bad reply) with a short reason in our own words; at
    HEADROOM_EXHAUST_AFTER_FAILURES consecutive ones, ACTIVE → EXHAUSTED exactly once. Returns True
    for the caller that exhausted it."""
    threshold = settings.HEADROOM_EXHAUST_AFTER_FAILURES
    return _count_and_move(
        key_id=key_id,
        counter="failure_count",
        name="exhaust",
        threshold=threshold,
        reason=REASON_EXHAUSTED_FAILURES.format(count=threshold),
        last_error=safe_reason(reason),
    )


def provider_key_in_flight(*, key_id: int) -> int:
    """Requests using the key right now (their leases)."""
    return ProviderKeyLease.objects.filter(key_id=key_id).count()


def provider_key_release(*, key_id: int, request_id: str) -> None:
    """A request the gateway's pick leased this key to is done with it (it moved to another key)."""
    ProviderKeyLease.objects.filter(key_id=key_id, request_id=request_id).delete()


def provider_key_leases_release_stale(*, older_than: timedelta) -> int:
    """Drop leases left by a gateway process that died mid-request; returns how many.

    No request lasts this long (the same bound as a stale balance hold), so an older lease belongs to a
    request that will never settle; left alone it would overstate a key's load and hold a DISABLING key
    until its drain timeout.
    """
    deleted, _ = ProviderKeyLease.objects.filter(created_at__lt=timezone.now() - older_than).delete()
    return deleted
