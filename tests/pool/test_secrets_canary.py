"""A canary provider secret taken through everything that touches a key: it must come out nowhere.

The member adds the key through the management API, the worker verifies it, the gateway serves with it
(JSON, stream, an upstream 401 that quotes the key back), the member and the operator look at it, and
the objects of the hot path that carry it are printed. Every log record of every logger (at DEBUG),
every task's arguments and result, every response body and the reprs of the objects that carry it are
searched for the secret and for its middle (a masked echo keeps only the ends), and for a prompt's text.
"""

import logging

import httpx
import pytest
from celery.signals import task_postrun, task_prerun
from django.test import Client

from accounts.models import User
from keys.models import ProviderKey
from pool.services import PickedKey
from tests.pool.conftest import MODEL, PROMPT, PROVIDER

CANARY = "sk-canary-6f1d9c3b7a5e4d2c8b0a9f7e6d5c4b3a"
CANARY_MIDDLE = CANARY[12:-6]  # what no masked form shows
PROMPT_CANARY = "canary-prompt-2b7e151628aed2a6abf71588"  # nor is a prompt logged


def _leaks(text: str) -> bool:
    return CANARY in text or CANARY_MIDDLE in text or PROMPT_CANARY in text


@pytest.fixture
def tasks_seen():
    seen: list[str] = []

    def before(sender=None, args=None, kwargs=None, **extra):
        seen.append(f"{sender.name} args={args!r} kwargs={kwargs!r}")

    def after(sender=None, retval=None, **extra):
        seen.append(f"{sender.name} result={retval!r}")

    task_prerun.connect(before, weak=False, dispatch_uid="canary-prerun")
    task_postrun.connect(after, weak=False, dispatch_uid="canary-postrun")
    yield seen
    task_prerun.disconnect(dispatch_uid="canary-prerun")
    task_postrun.disconnect(dispatch_uid="canary-postrun")


def test_a_provider_secret_appears_in_no_log_task_response_page_or_repr(world, caplog, tasks_seen):
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    member = world.member()
    browser = Client()
    browser.force_login(member.user)

    # the member adds the canary as their own key; the worker verifies it against the fake
    response = browser.post(
        "/api/v1/keys", {"provider": PROVIDER, "secret": CANARY, "label": "canary", "byok": True},
        content_type="application/json",
    )
    bodies.append(response.content.decode())
    assert response.status_code == 201, response.content
    key = ProviderKey.objects.get(pk=response.json()["id"])
    assert key.status == ProviderKey.Status.ACTIVE, key.last_error
    for path in ("/api/v1/keys", f"/api/v1/keys/{key.pk}", f"/api/v1/keys/{key.pk}/stats"):
        bodies.append(browser.get(path).content.decode())
    bodies.append(browser.post(f"/api/v1/keys/{key.pk}/revalidate").content.decode())

    # the gateway serves with it, as JSON and as a stream, then meets an upstream 401 quoting it back
    client = member.client(world.url)
    asked = [{"role": "user", "content": f"remember {PROMPT_CANARY}"}]
    answer = client.chat.completions.create(model=f"{PROVIDER}/{MODEL}", messages=asked)
    bodies.append(answer.model_dump_json())
    chunks = client.chat.completions.create(model=f"{PROVIDER}/{MODEL}", messages=PROMPT, stream=True)
    bodies.extend(chunk.model_dump_json() for chunk in chunks)
    world.fake.script(CANARY, status=401, times=1)
    refused = httpx.post(
        f"{world.url}/v1/chat/completions", json={"model": f"{PROVIDER}/{MODEL}", "messages": PROMPT},
        headers={"Authorization": f"Bearer {member.api_key}"}, timeout=30,
    )
    assert refused.status_code >= 400
    bodies.append(refused.text)
    assert sum(record.key == CANARY for record in world.fake.requests) >= 3, "the canary did not serve"

    # the operator looks at the key in the admin
    operator = User.objects.create_superuser(email="ops@example.com", password="x-long-password-1")
    staff = Client()
    staff.force_login(operator)
    for path in ("/admin/keys/providerkey/", f"/admin/keys/providerkey/{key.pk}/change/"):
        page = staff.get(path)
        assert page.status_code == 200, path
        bodies.append(page.content.decode())

    # then the canary is nowhere
    reprs = [repr(key), str(key), repr(PickedKey(key.pk, CANARY, "byok", member.user.pk, None))]
    assert tasks_seen, "no task ran: the verification did not go through the worker"
    for where, texts in (
        ("logs", [caplog.text] + [repr(record.__dict__) for record in caplog.records]),
        ("tasks", tasks_seen),
        ("responses and pages", bodies),
        ("reprs", reprs),
    ):
        leaked = [text[:300] for text in texts if _leaks(text)]
        assert not leaked, f"the provider secret leaked into {where}: {leaked}"
