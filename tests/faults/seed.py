"""Seed the fault tests' data into the database named by DATABASE_URL, once per session (run as
`python -m tests.faults.seed '{"fake_url": ..., "worlds": {"slug": {"platform_keys": N}, ...}}'`): per
world (one a test), a provider served by the fake, its model, N verified platform keys, and a member
(the signup credit on its balance) with an API key. Prints what the tests need as one JSON line."""

import json
import sys

import django


def main(options: dict) -> dict:
    django.setup()
    return {slug: world(slug=slug, fake_url=options["fake_url"], **spec) for slug, spec in options["worlds"].items()}


def world(*, slug: str, fake_url: str, platform_keys: int) -> dict:
    from accounts.services import api_key_create
    from core.money import parse_usd
    from keys.models import Provider, ProviderKey, ProviderModel
    from keys.services import provider_key_create
    from tests.accounts.factories import UserFactory
    from tests.keys.factories import verify_email

    provider = Provider.objects.create(
        slug=slug, name=slug, base_url=f"{fake_url}/v1", balance_api=Provider.BalanceApi.OPENROUTER,
        exchange_supported=True, pool_clearance=Provider.PoolClearance.CLEARED,
    )
    ProviderModel.objects.create(provider=provider, name="tiny", input_price=parse_usd("1"), output_price=parse_usd("2"))
    keys = []
    for n in range(platform_keys):
        secret = f"sk-fake-{slug}-{n:02d}-{'x' * 24}"
        key = provider_key_create(owner=None, provider=provider, secret=secret, label=f"platform {n}", consent=False,
                                  actor=None)
        key.refresh_from_db()
        assert key.status == ProviderKey.Status.ACTIVE, key.last_error
        keys.append({"id": key.pk, "secret": secret})
    member = UserFactory(email=f"member@{slug}.faults.test")  # factory sequences restart in each process
    verify_email(member)
    _, api_key = api_key_create(user=member, name="faults", scopes=["gateway", "read", "keys"])
    # The platform route: paid from the member's balance, so each request holds funds while in flight.
    return {"model": f"{slug}/tiny", "provider": slug, "api_key": api_key, "keys": keys, "member_id": member.pk}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
