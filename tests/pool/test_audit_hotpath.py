"""The audit triggers (core/audit.py) never fire on the gateway's hot path: requests on every route write
the key rows (LRU order), leases, stats, holds and earnings, none of them an operator decision."""

from pghistory.core import event_models
from pghistory.models import Context

from keys.models import ProviderKeyTransition
from tests.pool.conftest import MODEL, PROMPT, PROVIDER


def _audit_rows() -> dict[str, int]:
    counts = {model._meta.label: model.objects.count() for model in event_models()}
    counts["pghistory.Context"] = Context.objects.count()
    counts["keys.ProviderKeyTransition"] = ProviderKeyTransition.objects.count()
    return counts


def test_requests_on_every_route_leave_no_audit_record(world):
    # given a platform key, an exchange key and a donated key, every one of them set up and audited
    world.key()
    owner = world.member()
    world.key(owner=owner.user, exchange=True)
    donor = world.member()
    world.key(owner=donor.user, donate_to_pool=True, byok=True)
    alice = world.member()
    world.key(owner=alice.user, donate_to_pool=True)  # a member of the pool
    before = _audit_rows()
    assert before["keys.ProviderEvent"] > 0 and before["keys.ProviderModelEvent"] > 0

    # when members call the gateway on the platform/exchange, pool and BYOK routes, streaming or not
    client = alice.client(world.url)
    for model in (f"{PROVIDER}/{MODEL}", f"{PROVIDER}-pool/{MODEL}"):
        client.chat.completions.create(model=model, messages=PROMPT)
        list(client.chat.completions.create(model=model, messages=PROMPT, stream=True))
    donor.client(world.url).chat.completions.create(model=f"{PROVIDER}/{MODEL}", messages=PROMPT)

    # then no audit row was written
    assert _audit_rows() == before
