"""The audit triggers (core/audit.py) never fire on the gateway's hot path: requests on every route write
the key rows (LRU order), leases, stats, holds and earnings, none of them an operator decision. And
under ASGI, as production serves the admin, an operator's change still names its actor."""

import httpx
from django.conf import settings
from django.test import Client
from pghistory.core import event_models
from pghistory.models import Context

from core.audit import audit_trail
from keys.models import Provider, ProviderEvent, ProviderKeyTransition
from tests.accounts.factories import UserFactory
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


def test_under_asgi_an_admin_action_is_audited_with_its_actor(world):
    # given a staff member signed in to the server as production runs it (uvicorn, ASGI)
    staff = UserFactory(is_staff=True, is_superuser=True)
    signed_in = Client()
    signed_in.force_login(staff)
    world.provider.pool_clearance = Provider.PoolClearance.PENDING
    world.provider.save(update_fields=["pool_clearance"])
    session = {settings.SESSION_COOKIE_NAME: signed_in.cookies[settings.SESSION_COOKIE_NAME].value}
    with httpx.Client(base_url=world.url, cookies=session) as http:
        assert http.get("/admin/keys/provider/").status_code == 200
        token = http.cookies["csrftoken"]

        # when it clears the provider for the pool with the admin action
        response = http.post(
            "/admin/keys/provider/",
            data={"action": "clear_for_pool", "_selected_action": world.provider.pk},
            headers={"X-CSRFToken": token},
        )

    # then the record names it
    assert response.status_code == 302, response.text[:500]
    last = audit_trail(world.provider, event_model=ProviderEvent)[-1]
    assert (last.actor, last.after) == (staff, {"pool_clearance": "cleared"})
