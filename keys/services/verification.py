"""Checking keys against their provider: verification, exchange re-verification and probes.

One HTTP check per call (`provider_key_check`): the provider's balance API where it has one
(keys.balance parses each provider's real reply shape), else a cheap authenticated `GET /models`.
The URL comes only from the Provider row, is checked again right before the call
(keys.upstream.resolve_upstream), redirects are never followed and every timeout is explicit.

The check runs outside any database transaction (no row lock held across the network); its outcome
is then applied under the row lock, after re-reading the state, so a key that changed meanwhile
(say, removed while being verified) is left alone. Transient outcomes (provider down, 5xx, 429)
raise `TransientCheckError` for the Celery task to retry with backoff.

Nothing here logs or stores a secret or a provider's reply body: `detail` strings are our own words.
"""

import logging
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from core.money import NANOS_PER_USD, format_usd, round_nanos, usd_str
from keys.balance import (
    BALANCE_PATHS,
    BalanceParseError,
    FollowUpRequired,
    parse_balance,
)
from keys.crypto import SecretDecryptError, decrypt_secret
from keys.models import Provider, ProviderKey
from keys.services.provider_keys import (
    exchange_min_balance,
    provider_key_lock,
    provider_key_resume_locked,
    provider_key_transition,
    safe_reason,
)
from keys.upstream import UpstreamRefused, VettedUpstream, join_url, parse_retry_after, resolve_upstream

logger = logging.getLogger(__name__)
Status = ProviderKey.Status

MODELS_PATH = "/models"
MAX_REPLY_BYTES = 1024 * 1024
USER_AGENT = "Headroom-key-verifier/1"

OK, REJECTED, MALFORMED, REFUSED, UNAVAILABLE, RATE_LIMITED = (
    "ok",
    "rejected",
    "malformed",
    "refused",
    "unavailable",
    "rate_limited",
)
TRANSIENT = frozenset({UNAVAILABLE, RATE_LIMITED})

DETAIL_OK = "verified"
DETAIL_REJECTED = "the provider rejected the key (HTTP {status})"
DETAIL_HTTP = "the provider answered HTTP {status}"
DETAIL_REDIRECT = "the provider answered with a redirect (HTTP {status}), which is not followed"
DETAIL_DOWN = "the provider could not be reached ({error})"
DETAIL_SERVER = "the provider is having trouble (HTTP {status})"
DETAIL_RATE_LIMITED = "the provider is rate limiting the key (HTTP 429)"
DETAIL_MALFORMED = "the provider's balance reply could not be read: {error}"
DETAIL_TOO_LARGE = "the provider's reply is larger than {limit} bytes"
DETAIL_NO_FUNDS = "the provider reports no usable balance"
DETAIL_UNMEASURED = "the provider's balance cannot be measured with this key"
DETAIL_CURRENCY = "the provider reports the balance in {currency}, which has no configured exchange rate"
DETAIL_DECRYPT = "the stored secret cannot be decrypted with the configured keys"
DETAIL_BALANCE_LOW = "exchange balance {balance} is below the {minimum} minimum"


class TransientCheckError(Exception):
    """The provider could not give an answer now; retry later. The message is our own words."""


@dataclass(frozen=True)
class CheckResult:
    outcome: str
    detail: str
    balance: int | None = None  # nanodollars; None: no balance API, or not measurable
    available: bool = True  # False: authenticated, but the provider says it cannot spend
    retry_after: float | None = None
    http_status: int | None = None


def _client() -> httpx.Client:
    timeout = float(settings.HEADROOM_VERIFY_TIMEOUT_SECONDS)
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        follow_redirects=False,
        # No proxy from the environment: the key goes to the provider's URL and nowhere else.
        trust_env=False,
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
    )


class _TooLarge(Exception):
    pass


@sensitive_variables("secret")
def _get(client: httpx.Client, upstream: VettedUpstream, secret: str) -> tuple[int, bytes, str | None]:
    """(status, body capped at MAX_REPLY_BYTES, Retry-After header) of one authenticated GET, sent to
    the address vetted by resolve_upstream (the name as Host and TLS server name)."""
    headers = {"Authorization": f"Bearer {secret}"}
    extensions = {}
    if upstream.server_name is not None:
        headers["Host"] = upstream.host_header
        extensions["sni_hostname"] = upstream.server_name
    with client.stream("GET", upstream.connect_url, headers=headers, extensions=extensions) as response:
        body = bytearray()
        if response.status_code == 200:
            for chunk in response.iter_bytes():
                body.extend(chunk)
                if len(body) > MAX_REPLY_BYTES:
                    raise _TooLarge
        return response.status_code, bytes(body), response.headers.get("Retry-After")


def _classify(status: int, retry_after: str | None) -> CheckResult | None:
    """The outcome of a non-200 status, or None for 200."""
    if status == 200:
        return None
    if status in (401, 403):
        return CheckResult(REJECTED, DETAIL_REJECTED.format(status=status), http_status=status)
    if status == 402:
        # Authenticated, but out of funds (DeepSeek and others answer 402 "Insufficient Balance").
        return CheckResult(OK, DETAIL_NO_FUNDS, balance=0, available=False, http_status=status)
    if status == 429:
        return CheckResult(
            RATE_LIMITED, DETAIL_RATE_LIMITED, retry_after=parse_retry_after(retry_after), http_status=status
        )
    if status == 408 or status >= 500:
        return CheckResult(UNAVAILABLE, DETAIL_SERVER.format(status=status), http_status=status)
    if 300 <= status < 400:
        return CheckResult(REJECTED, DETAIL_REDIRECT.format(status=status), http_status=status)
    return CheckResult(REJECTED, DETAIL_HTTP.format(status=status), http_status=status)


def balance_to_nanos(amount: Decimal, currency: str) -> int | None:
    """A provider balance in nanodollars; None when its currency has no configured rate.

    HEADROOM_FX_RATES maps a currency code to the USD value of one unit, as a decimal string
    (e.g. {"CNY": "0.14"}). A balance only gates admission to the exchange, so a periodically
    maintained rate is precise enough; it never moves money.
    """
    if currency == "USD":
        rate = Decimal(1)
    else:
        raw = settings.HEADROOM_FX_RATES.get(currency)
        try:
            rate = Decimal(str(raw)) if raw is not None else None
        except InvalidOperation:
            rate = None
        if rate is None or not rate.is_finite() or rate <= 0:
            return None
    return round_nanos(amount * rate * NANOS_PER_USD)


@sensitive_variables("secret")
def _read_balance(client: httpx.Client, provider: Provider, secret: str, body: bytes) -> CheckResult:
    kind = provider.balance_api
    try:
        try:
            reading = parse_balance(kind, body, currency=provider.balance_currency)
        except FollowUpRequired as follow_up:
            # OpenRouter key without a spending limit: the account's credits are on another path.
            upstream = resolve_upstream(join_url(provider.base_url, follow_up.path))
            status, body, retry_after = _get(client, upstream, secret)
            if status in (401, 403):
                return CheckResult(OK, DETAIL_UNMEASURED, balance=None)
            problem = _classify(status, retry_after)
            if problem is not None:
                return problem
            reading = parse_balance(follow_up.kind, body, currency=provider.balance_currency)
    except BalanceParseError as error:
        return CheckResult(MALFORMED, DETAIL_MALFORMED.format(error=error))
    nanos = balance_to_nanos(reading.amount, reading.currency)
    if nanos is None:
        return CheckResult(OK, DETAIL_CURRENCY.format(currency=reading.currency), balance=None)
    return CheckResult(OK, DETAIL_OK, balance=nanos, available=reading.is_available)


@sensitive_variables("secret")
def provider_key_check(*, provider: Provider, secret: str) -> CheckResult:
    """One authenticated call to the provider with `secret`; never raises for upstream trouble."""
    path = BALANCE_PATHS[provider.balance_api] if provider.has_balance_api else MODELS_PATH
    try:
        upstream = resolve_upstream(join_url(provider.base_url, path))
        with _client() as client:
            status, body, retry_after = _get(client, upstream, secret)
            problem = _classify(status, retry_after)
            if problem is not None:
                return problem
            if not provider.has_balance_api:
                return CheckResult(OK, DETAIL_OK, http_status=status)
            return _read_balance(client, provider, secret, body)
    except UpstreamRefused as error:
        return CheckResult(REFUSED, str(error))
    except _TooLarge:
        return CheckResult(MALFORMED, DETAIL_TOO_LARGE.format(limit=MAX_REPLY_BYTES))
    except (httpx.TimeoutException, httpx.TransportError, OSError) as error:
        return CheckResult(UNAVAILABLE, DETAIL_DOWN.format(error=type(error).__name__))


@sensitive_variables("secret")
def _check_key(key: ProviderKey) -> CheckResult:
    try:
        secret = decrypt_secret(key.secret_ciphertext)
    except SecretDecryptError:
        return CheckResult(REJECTED, DETAIL_DECRYPT)
    result = provider_key_check(provider=key.provider, secret=secret)
    logger.info(
        "provider key %s check at %s: %s (HTTP %s)", key.pk, key.provider.slug, result.outcome, result.http_status
    )
    return result


def _record_balance(key: ProviderKey, result: CheckResult) -> list[str]:
    key.verified_at = timezone.now()
    key.verified_balance = result.balance
    key.last_error = ""
    return ["verified_at", "verified_balance", "last_error"]


def _balance_problem(key: ProviderKey, result: CheckResult) -> str | None:
    """Why an ACTIVE key must be EXHAUSTED after a successful check, or None."""
    if not result.available:
        return DETAIL_NO_FUNDS
    if key.exchange:
        if result.balance is None:
            return result.detail if result.detail != DETAIL_OK else DETAIL_UNMEASURED
        minimum = exchange_min_balance()
        if result.balance < minimum:
            return DETAIL_BALANCE_LOW.format(balance=f"${usd_str(result.balance)}", minimum=format_usd(minimum))
    return None


def _exhaust_if_needed(key: ProviderKey, result: CheckResult) -> None:
    problem = _balance_problem(key, result)
    if problem is not None:
        key.last_error = safe_reason(problem)
        provider_key_transition(key=key, name="exhaust", actor=None, reason=problem, extra_fields=("last_error",))


def _fresh(key_id: int) -> ProviderKey | None:
    return ProviderKey.objects.select_related("provider").filter(pk=key_id).first()


def provider_key_note_error(*, key_id: int, detail: str) -> None:
    """Record why a check could not complete (after the task's retries), leaving the state alone."""
    ProviderKey.objects.filter(pk=key_id).update(last_error=safe_reason(detail))


def _is_pending(key: ProviderKey) -> bool:
    return key.status == Status.PENDING


def _is_listed(key: ProviderKey) -> bool:
    return key.status == Status.ACTIVE and key.exchange


def _check_if(key_id: int, eligible) -> CheckResult | None:
    """Check the key if it is `eligible` now (else None); transient outcomes raise for a retry.
    Callers re-lock the row and ask `eligible` again before applying the result."""
    key = _fresh(key_id)
    if key is None or not eligible(key):
        return None
    result = _check_key(key)
    if result.outcome in TRANSIENT:
        raise TransientCheckError(result.detail)
    return result


def provider_key_verify(*, key_id: int) -> str:
    """Verify a PENDING key: ACTIVE (then EXHAUSTED if its balance rules fail) or FAILED with the
    reason. Any other state is left alone (idempotent). Raises TransientCheckError to be retried."""
    result = _check_if(key_id, _is_pending)
    if result is None:
        return "skipped"
    with transaction.atomic():
        key = provider_key_lock(key_id=key_id)
        if not _is_pending(key):
            return "skipped"
        if result.outcome == OK:
            fields = _record_balance(key, result)
            provider_key_transition(key=key, name="activate", actor=None, reason=DETAIL_OK, extra_fields=tuple(fields))
            _exhaust_if_needed(key, result)
        else:
            key.last_error = safe_reason(result.detail)
            provider_key_transition(
                key=key, name="fail", actor=None, reason=result.detail, extra_fields=("last_error",)
            )
        return key.status


def provider_key_reverify_exchange(*, key_id: int) -> str:
    """Re-read an ACTIVE exchange key's balance; EXHAUSTED when it is too low or cannot be read."""
    result = _check_if(key_id, _is_listed)
    if result is None:
        return "skipped"
    with transaction.atomic():
        key = provider_key_lock(key_id=key_id)
        if not _is_listed(key):
            return "skipped"
        if result.outcome == OK:
            key.save(update_fields=[*_record_balance(key, result), "updated_at"])
            _exhaust_if_needed(key, result)
        else:
            # Fail closed: a balance that cannot be verified cannot back exchange traffic.
            key.last_error = safe_reason(result.detail)
            provider_key_transition(
                key=key, name="exhaust", actor=None, reason=result.detail, extra_fields=("last_error",)
            )
        return key.status


def paused_key_is_due(key: ProviderKey, *, now=None) -> bool:
    """A PAUSED key may be probed after its Retry-After, or HEADROOM_PROBE_PAUSED_AFTER seconds
    after it was paused when the provider named no time."""
    now = now or timezone.now()
    if key.retry_after_until is not None:
        return key.retry_after_until <= now
    wait = timedelta(seconds=settings.HEADROOM_PROBE_PAUSED_AFTER)
    return key.status_changed_at + wait <= now


def provider_key_probe(*, key_id: int) -> str:
    """Probe a PAUSED key that is due: a successful check resumes it (ACTIVE); anything else keeps it
    paused and schedules the next probe. Never retried by Celery: the periodic sweep is the retry."""
    key = _fresh(key_id)
    if key is None or key.status != Status.PAUSED or not paused_key_is_due(key):
        return "skipped"
    result = _check_key(key)
    with transaction.atomic():
        key = provider_key_lock(key_id=key_id)
        if key.status != Status.PAUSED:
            return "skipped"
        if result.outcome == OK:
            fields = _record_balance(key, result)
            key.save(update_fields=[*fields, "updated_at"])
            provider_key_resume_locked(key=key, actor=None, reason="probe succeeded")
            _exhaust_if_needed(key, result)
            return key.status
        backoff = settings.HEADROOM_PROBE_BACKOFF_SECONDS
        wait = result.retry_after if result.retry_after is not None else backoff
        key.retry_after_until = timezone.now() + timedelta(seconds=min(wait, 86_400))
        key.last_error = safe_reason(result.detail)
        key.save(update_fields=["retry_after_until", "last_error", "updated_at"])
        return key.status
