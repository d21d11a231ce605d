"""Writes for users, organizations and gateway API keys."""

import hashlib
import re
import secrets
from datetime import timedelta

from allauth.account.models import EmailAddress
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import ApiKey, Membership, Organization, User, gateway_only
from accounts.signals import user_email_verified
from core.errors import ServiceError

API_KEY_PREFIX = "hr-"
API_KEY_RANDOM_BYTES = 32
API_KEY_DISPLAY_LENGTH = 11  # "hr-" + 8 characters
# "hr-" + 43 URL-safe base64 characters (32 random bytes). Anything else is
# refused before it is hashed or looked up.
API_KEY_PATTERN = re.compile(r"hr-[A-Za-z0-9_-]{43}")
LAST_USED_RESOLUTION = timedelta(minutes=1)

ORG_NOT_A_MEMBER = "You are not a member of that organization."
ORG_OWNER_REQUIRED = "Only an organization's owners can do that."
ORG_NAME_BUSY = "Too many organizations are being created with that name right now: try again."
ORGANIZATION_SLUG_ATTEMPTS = 20
API_KEY_LIMIT_REACHED = "You already hold {limit} API keys, the most a member may: revoke one you no longer use."
API_KEY_SCOPES_BEYOND_MAKER = "An API key cannot create a key with scopes it does not have itself ({missing})."


class AccountsError(ServiceError):
    """A refused account operation; the message is safe to show."""


def api_key_hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def user_email_verified_complete(*, user: User) -> None:
    """What a member gets once they have proven an e-mail address, from the apps above accounts
    (billing: the signup credit, once per user however many addresses they verify).

    Runs in the caller's transaction when there is one, so a refused welcome undoes the verification.
    """
    user_email_verified.send(sender=User, user=user)


def user_create(*, email: str, password: str | None = None, verified: bool = False, **extra) -> User:
    """Create a user outside the sign-up form (operators, demo data). `verified=True` vouches for the
    address as the admin's "mark verified" does, and so grants the welcome; otherwise the member proves
    it at first login like anyone who signed up."""
    with transaction.atomic():
        user = User.objects.create_user(email=email, password=password, **extra)
        if verified:
            EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
            user_email_verified_complete(user=user)
    return user


def _api_key_room_check(*, user: User) -> None:
    """Refuse a key past HEADROOM_MAX_API_KEYS. Locks the member's row first, so concurrent creations
    count one after another and none slips past the cap; the caller's transaction holds the lock
    (NO KEY UPDATE: rows that merely reference the member, as the gateway writes, are not blocked)."""
    User.objects.select_for_update(no_key=True).filter(pk=user.pk).values_list("pk", flat=True).get()
    limit = settings.HEADROOM_MAX_API_KEYS
    if ApiKey.objects.filter(user=user, revoked_at__isnull=True).count() >= limit:
        raise AccountsError(API_KEY_LIMIT_REACHED.format(limit=limit), code="api_key_limit_reached", status_code=409)


@transaction.atomic
def api_key_create(
    *,
    user: User,
    name: str,
    key_pool_mode: str = ApiKey.PoolMode.ANY,
    byok_fallback: bool = True,
    monthly_limit: int | None = None,
    organization: Organization | None = None,
    scopes: list[str] | None = None,
    granted_by: ApiKey | None = None,
    raw: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a gateway API key; returns it with the raw key, which is never stored or shown again.

    `scopes` defaults to the gateway alone. A key made by another API key (`granted_by`, one with the
    `keys` scope) gets no scope its maker lacks, so a leaked key cannot mint a stronger one. `raw` names
    the key instead of a random one: only for a key published on purpose (the offline demo's)."""
    scopes = sorted(set(scopes if scopes is not None else gateway_only()))
    if granted_by is not None and not set(scopes) <= set(granted_by.scopes):
        missing = ", ".join(sorted(set(scopes) - set(granted_by.scopes)))
        raise AccountsError(API_KEY_SCOPES_BEYOND_MAKER.format(missing=missing), code="scope_escalation",
                            status_code=403)
    if organization is not None and not Membership.objects.filter(organization=organization, user=user).exists():
        raise AccountsError(ORG_NOT_A_MEMBER, code="not_a_member", status_code=403)
    _api_key_room_check(user=user)
    if raw is not None and not API_KEY_PATTERN.fullmatch(raw):
        raise ValueError("an API key is 'hr-' and 43 characters of A-Z, a-z, 0-9, '-' and '_'")
    raw = raw or API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_RANDOM_BYTES)
    api_key = ApiKey.objects.create(
        user=user,
        organization=organization,
        name=name,
        prefix=raw[:API_KEY_DISPLAY_LENGTH],
        hashed_key=api_key_hash(raw),
        key_pool_mode=key_pool_mode,
        byok_fallback=byok_fallback,
        monthly_limit=monthly_limit,
        scopes=scopes,
    )
    return api_key, raw


def api_keys_grant_legacy_scopes(*, made_before, dry_run: bool = False) -> int:
    """Give unrevoked keys made before `made_before` every scope (what keys could do before scopes
    existed); returns how many keys that is. Withdrawals stay a signed-in session's."""
    keys = ApiKey.objects.filter(created_at__lt=made_before, revoked_at__isnull=True)
    if dry_run:
        return keys.count()
    return keys.update(scopes=list(ApiKey.Scope.values))


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key; it stops authenticating at once. Revoking twice is harmless."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def api_key_touch(*, api_key: ApiKey) -> None:
    """Record use, at most once a minute per key, so hot keys do not write on every request."""
    now = timezone.now()
    if api_key.last_used_at and now - api_key.last_used_at < LAST_USED_RESOLUTION:
        return
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    api_key.last_used_at = now


def organization_create(*, owner: User, name: str) -> Organization:
    """A new organization with `owner` as its owner, under the first free slug of its name (`acme`,
    `acme-2`, ...). Two members creating "Acme" at once both succeed: the slug's unique index decides,
    and the loser takes the next one."""
    base = slugify(name)[:80] or "org"
    taken = set(Organization.objects.filter(slug__startswith=base).values_list("slug", flat=True))
    candidates = (base if n == 1 else f"{base}-{n}" for n in range(1, ORGANIZATION_SLUG_ATTEMPTS + len(taken) + 1))
    tried = 0
    for slug in candidates:
        if slug in taken:
            continue
        try:
            with transaction.atomic():
                organization = Organization.objects.create(name=name, slug=slug)
                Membership.objects.create(organization=organization, user=owner, role=Membership.Role.OWNER)
            return organization
        except IntegrityError:
            tried += 1  # created by someone else between our look and our insert
            if tried >= ORGANIZATION_SLUG_ATTEMPTS:
                break
    raise AccountsError(ORG_NAME_BUSY, code="organization_name_busy", status_code=409)


def organization_member_add(
    *, organization: Organization, actor: User, user: User, role: str = Membership.Role.MEMBER
) -> Membership:
    if not Membership.objects.filter(organization=organization, user=actor, role=Membership.Role.OWNER).exists():
        raise AccountsError(ORG_OWNER_REQUIRED, code="not_org_owner", status_code=403)
    membership, _ = Membership.objects.update_or_create(
        organization=organization, user=user, defaults={"role": role}
    )
    return membership
