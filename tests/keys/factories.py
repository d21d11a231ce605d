import secrets

import factory
from allauth.account.models import EmailAddress
from django.test import TestCase

from keys.models import Provider
from keys.services import provider_key_create


class ProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Provider
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"prov{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())
    base_url = "https://api.example.com/v1"
    api_style = Provider.ApiStyle.OPENAI
    balance_api = Provider.BalanceApi.NONE
    pool_clearance = Provider.PoolClearance.CLEARED
    exchange_supported = factory.LazyAttribute(lambda o: o.balance_api != Provider.BalanceApi.NONE)


def new_secret(prefix: str = "sk-test") -> str:
    return f"{prefix}-{secrets.token_urlsafe(24)}"


def verify_email(user) -> None:
    EmailAddress.objects.update_or_create(
        user=user, email=user.email, defaults={"verified": True, "primary": True}
    )


def enrol(owner, provider, *, secret: str | None = None, actor=None, **flags):
    """A key enrolled through the service, as a member would; its verification runs (eagerly, on
    commit) before this returns."""
    if flags.get("donate_to_pool"):
        verify_email(actor or owner)
        flags.setdefault("consent", True)
    with TestCase.captureOnCommitCallbacks(execute=True):
        key = provider_key_create(
            owner=owner,
            provider=provider,
            secret=secret or new_secret(),
            label=flags.pop("label", "test key"),
            actor=actor if actor is not None else owner,
            **flags,
        )
    key.refresh_from_db()
    return key


def key_in_state(
    status: str, *, owner=None, provider=None, secret: str | None = None, in_flight: int = 0, **fields
):
    """A key row put straight into `status` (for state-machine tables), with a real encrypted secret."""
    from keys.crypto import encrypt_secret, secret_fingerprint
    from keys.models import ProviderKey, ProviderKeyLease, ProviderKeyStats
    from tests.accounts.factories import UserFactory

    secret = secret or new_secret()
    owner = owner or UserFactory()
    key = ProviderKey.objects.create(
        owner_user=owner,
        provider=provider or ProviderFactory(),
        label="table key",
        secret_ciphertext=encrypt_secret(secret),
        fingerprint=secret_fingerprint(secret),
        secret_last4=secret[-4:],
        status=status,
        **fields,
    )
    ProviderKeyStats.objects.create(key=key)
    for n in range(in_flight):
        ProviderKeyLease.objects.create(key=key, request_id=f"req_in_flight_{key.pk}_{n}")
    return key
