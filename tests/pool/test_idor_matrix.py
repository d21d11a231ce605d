"""Authorization matrices generated from the URL resolver, so a new endpoint is covered without anyone
remembering to add it: member B gets 404 on every object of member A, by every method, through the API
and the pages; a signed-in member who is not staff gets 403 on every admin page."""

import importlib
import re

import pytest
from django.apps import apps
from django.contrib import admin
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts.models import ApiKey
from accounts.services import api_key_create
from keys.models import ProviderKey
from payouts.models import Withdrawal
from tests.conftest import signed_in_client
from tests.payouts.factories import ADDRESSES, fund_frozen

_seed_networks = importlib.import_module("payouts.migrations.0002_seed_networks").seed

# Which of member A's objects a route's id names, by the route's prefix. A route with an id that no
# prefix matches fails the test: decide whose object it is, and add it here.
OBJECT_OF_ROUTE = {
    "api/v1/api-keys/": "api_key",
    "dashboard/api-keys/": "api_key",
    "api/v1/keys/": "provider_key",
    "dashboard/keys/": "provider_key",
    "api/v1/payouts/withdrawals/": "withdrawal",
}
PARAMETER = re.compile(r"<int:(\w+)>")
METHODS = ("get", "post", "put", "patch", "delete")


def _routes(resolver=None, prefix=""):
    for pattern in (resolver or get_resolver()).url_patterns:
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern.default_args


def test_member_b_gets_404_on_every_object_of_member_a(world):
    _seed_networks(apps, None)
    alice, bob = world.member(), world.member()
    objects = {
        "api_key": ApiKey.objects.get(user=alice.user).pk,
        "provider_key": world.key(owner=alice.user, byok=True).pk,
    }
    fund_frozen(alice.user, "20.00")
    made = signed_in_client(alice.user).post(
        "/api/v1/payouts/withdrawals",
        {"amount": "10.00", "network": "USDT-TRC20", "address": ADDRESSES["USDT-TRC20"]}, format="json",
    )
    assert made.status_code == 201, made.content
    objects["withdrawal"] = made.json()["id"]
    api_key_create(user=bob.user, name="bob's own")  # bob has objects of his own: ids are not just "none"
    before = (ApiKey.objects.filter(revoked_at__isnull=True).count(), list(ProviderKey.objects.values_list("status")),
              Withdrawal.objects.count())

    intruder = signed_in_client(bob.user)
    intruder.raise_request_exception = False
    tried = []
    for route, defaults in _routes():
        if route.startswith("admin/") or not PARAMETER.search(route):
            continue
        kind = next((kind for prefix, kind in OBJECT_OF_ROUTE.items() if route.startswith(prefix)), None)
        assert kind is not None, f"{route}: whose object does its id name? Add it to OBJECT_OF_ROUTE."
        path = "/" + PARAMETER.sub(str(objects[kind]), route).replace("^", "").replace("$", "")
        answers = {method: getattr(intruder, method)(path).status_code for method in METHODS}
        assert set(answers.values()) <= {404, 405}, (path, answers)
        assert 404 in answers.values(), (path, answers)
        tried.append(path)
    print(f"\n{len(tried)} routes with an id, each by {len(METHODS)} methods: 404 or 405 for member B")
    assert len(tried) >= 10
    after = (ApiKey.objects.filter(revoked_at__isnull=True).count(), list(ProviderKey.objects.values_list("status")),
             Withdrawal.objects.count())
    assert after == before


@pytest.mark.django_db
def test_a_member_who_is_not_staff_gets_403_on_every_admin_page():
    from tests.accounts.factories import UserFactory

    member = signed_in_client(UserFactory())
    member.raise_request_exception = False
    pages = [reverse("admin:index")]
    for model, model_admin in admin.site._registry.items():
        info = (model._meta.app_label, model._meta.model_name)
        pages.append(reverse("admin:%s_%s_changelist" % info))
        pages.append(reverse("admin:%s_%s_add" % info))
    # (the admin sends a non-staff session to its login, which refuses it: allauth's secure_admin_login)
    denied = {page: member.get(page, follow=True).status_code for page in pages}
    assert set(denied.values()) == {403}, {page: status for page, status in denied.items() if status != 403}
    print(f"\n{len(pages)} admin pages: 403 for a member")
    assert len(pages) >= 20
