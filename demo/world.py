"""The offline demo's small living world, made by `seed_demo` (local settings only).

Two providers served by the demo provider (demo/provider.py): `demo`, cleared for the pool, with a
platform key, and `demo-byok`. The demo member owns a key donated to the `demo` pool (which passes the
pool's gate) and a BYOK key for `demo-byok`, and signs in with a published API key; a second member,
the seller, donates a `demo` key to the pool and lists another on the exchange. So, for the demo member:

- `demo-byok/demo-mini` is served by the member's own key (BYOK, free tier);
- `demo-pool/demo-mini` by the seller's donated key (the pool: the seller's counters and reward move);
- `demo/demo-mini` by the platform key or the seller's exchange key, least recently used first (the
  member is charged; the seller's frozen balance moves when the exchange key serves);
- `demo/demo-mini` with `key_pool_mode: "platformOnly"` by the platform key alone.

Every step is idempotent: a second run finds what the first made and adds nothing.
"""

from dataclasses import dataclass

from django.db import transaction

from accounts.models import ApiKey, User
from accounts.services import api_key_create, api_key_hash, user_create
from core.money import parse_usd
from demo.provider import CHAT_MODELS, EMBEDDING_MODELS
from keys.models import Provider, ProviderKey, ProviderModel
from keys.services import provider_key_create

PASSWORD = "headroom-demo"  # published, like the API key below: local settings only
MEMBER_EMAIL = "demo@headroom.local"
SELLER_EMAIL = "seller@headroom.local"
# The demo member's API key, printed at start-up and shown on the dashboard: a published key, as the
# password is, so the README's snippet works as it is.
API_KEY = "hr-demo-offline-key-0123456789abcdefghijklmnop"
SHARED, OWN = "demo", "demo-byok"
# Priced like a small real model (per 1M tokens), so costs, rewards and earnings show.
PRICES = {
    CHAT_MODELS[0]: (parse_usd("0.15"), parse_usd("0.60")),
    EMBEDDING_MODELS[0]: (parse_usd("0.02"), parse_usd("0")),
}


@dataclass
class DemoWorld:
    member: User
    seller: User
    keys: list[ProviderKey]


def _provider(slug: str, name: str, base_url: str, *, shared: bool) -> Provider:
    provider, _ = Provider.objects.update_or_create(
        slug=slug,
        defaults={
            "name": name, "base_url": base_url, "api_style": Provider.ApiStyle.OPENAI,
            "balance_api": Provider.BalanceApi.OPENROUTER, "exchange_supported": shared,
            "pool_clearance": Provider.PoolClearance.CLEARED if shared else Provider.PoolClearance.PENDING,
            "catalogue_managed": False, "is_active": True,
        },
    )
    for model, (input_price, output_price) in PRICES.items():
        ProviderModel.objects.update_or_create(
            provider=provider, name=model,
            defaults={"input_price": input_price, "output_price": output_price, "is_active": True},
        )
    return provider


def _member(email: str) -> User:
    return User.objects.filter(email=email).first() or user_create(email=email, password=PASSWORD, verified=True)


def _key(provider: Provider, owner: User | None, label: str, **flags) -> ProviderKey:
    found = ProviderKey.objects.filter(provider=provider, owner_user=owner, label=label, removed_at__isnull=True).first()
    if found is not None:
        return found
    secret = f"demo-{provider.slug}-{label.lower().replace(' ', '-')}"
    return provider_key_create(owner=owner, provider=provider, secret=secret, label=label, actor=owner,
                               consent=flags.get("donate_to_pool", False), **flags)


@transaction.atomic
def demo_world_seed(*, base_url: str) -> DemoWorld:
    """Make (or find) the demo world, its providers pointed at the demo provider at `base_url`. The keys'
    verifications are enqueued as for any key (they run when this transaction commits)."""
    shared = _provider(SHARED, "Headroom demo (offline)", base_url, shared=True)
    own = _provider(OWN, "Your own demo account (offline)", base_url, shared=False)
    member, seller = _member(MEMBER_EMAIL), _member(SELLER_EMAIL)
    if not ApiKey.objects.filter(hashed_key=api_key_hash(API_KEY)).exists():
        api_key_create(user=member, name="demo", scopes=["gateway", "read"], raw=API_KEY)
    # The seller's exchange key before the platform key: never used yet, the older one serves first
    # (least recently used, then by id), so the demo's first platform request shows an exchange earning.
    keys = [
        _key(shared, seller, "Seller exchange key", exchange=True),
        _key(shared, seller, "Seller donated key", donate_to_pool=True),
        _key(shared, None, "Demo platform key"),
        _key(shared, member, "Demo donated key", donate_to_pool=True),
        _key(own, member, "Demo BYOK key", byok=True),
    ]
    return DemoWorld(member=member, seller=seller, keys=keys)
