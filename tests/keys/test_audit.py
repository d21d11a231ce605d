"""Operator decisions on providers, prices and keys leave one audit record each: who, when, before, after."""

import io

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from core.audit import audit_entry, audit_trail
from core.money import parse_usd
from keys.models import Provider, ProviderEvent, ProviderKey, ProviderKeyTransition, ProviderModel, ProviderModelEvent
from tests.keys.factories import ProviderFactory, key_in_state

pytestmark = pytest.mark.django_db
S = ProviderKey.Status
PROVIDERS, MODELS, KEYS = "/admin/keys/provider/", "/admin/keys/providermodel/", "/admin/keys/providerkey/"


def _new_events(model, since: int) -> list:
    return list(model.objects.filter(pgh_id__gt=since).order_by("pgh_id"))


def _last_id(model) -> int:
    return model.objects.order_by("-pgh_id").values_list("pgh_id", flat=True).first() or 0


@pytest.mark.parametrize(
    ("action", "before", "after"),
    [
        ("clear_for_pool", "pending", "cleared"),
        ("exclude_from_pool", "pending", "excluded"),
    ],
)
def test_pool_clearance_set_in_the_admin_is_audited(admin_client, operator, action, before, after):
    # given a provider pending review
    provider = ProviderFactory(pool_clearance=Provider.PoolClearance.PENDING)
    since = _last_id(ProviderEvent)

    # when an operator clears or excludes it with the admin action
    response = admin_client.post(PROVIDERS, {"action": action, ACTION_CHECKBOX_NAME: [provider.pk]})
    assert response.status_code == 302

    # then one record names the operator and the change
    [event] = _new_events(ProviderEvent, since)
    entry = audit_entry(event)
    assert entry.action == "update" and entry.actor == operator and entry.at is not None
    assert (entry.before, entry.after) == ({"pool_clearance": before}, {"pool_clearance": after})
    assert entry.origin == PROVIDERS


def test_pool_clearance_edited_in_the_providers_form_is_audited_too(admin_client, operator):
    # given a cleared provider (edited in its form, not through the action: the trigger sees every write)
    provider = ProviderFactory(slug="formed", pool_clearance=Provider.PoolClearance.CLEARED)
    form = {
        "slug": "formed", "name": "Formed", "base_url": provider.base_url, "api_style": "openai",
        "balance_api": "none", "balance_currency": "USD", "pool_clearance": "excluded", "prices_provider": "",
        "cap_field": "max_tokens", "is_active": "on", "catalogue_managed": "on",
    }
    since = _last_id(ProviderEvent)

    response = admin_client.post(f"{PROVIDERS}{provider.pk}/change/", form)

    assert response.status_code == 302, response.content.decode()[:1000]
    [event] = _new_events(ProviderEvent, since)
    entry = audit_entry(event)
    assert entry.actor == operator
    assert (entry.before, entry.after) == ({"pool_clearance": "cleared"}, {"pool_clearance": "excluded"})


def test_a_price_override_in_the_admin_is_audited(admin_client, operator):
    # given a model priced by the package
    provider = ProviderFactory()
    model = ProviderModel.objects.create(
        provider=provider, name="m1", input_price=parse_usd("1"), output_price=parse_usd("2")
    )
    since = _last_id(ProviderModelEvent)

    # when an operator overrides its prices
    response = admin_client.post(
        f"{MODELS}{model.pk}/change/",
        {"provider": provider.pk, "name": "m1", "is_active": "on", "input_price_usd": "0.50", "output_price_usd": "2"},
    )
    assert response.status_code == 302, response.content.decode()[:1000]

    # then one record has the old and new price and the operator
    [event] = _new_events(ProviderModelEvent, since)
    entry = audit_entry(event)
    assert entry.actor == operator
    assert entry.before == {"input_price": parse_usd("1"), "price_source": "package"}
    assert entry.after == {"input_price": parse_usd("0.50"), "price_source": "override"}


def test_following_the_package_again_is_audited_although_it_is_a_bulk_update(admin_client, operator):
    # given an override (the action below is a queryset.update(): no save(), no signal)
    model = ProviderModel.objects.create(
        provider=ProviderFactory(), name="m2", input_price=1, output_price=1,
        price_source=ProviderModel.PriceSource.OVERRIDE,
    )
    since = _last_id(ProviderModelEvent)

    admin_client.post(MODELS, {"action": "use_package_prices", ACTION_CHECKBOX_NAME: [model.pk]})

    [event] = _new_events(ProviderModelEvent, since)
    entry = audit_entry(event)
    assert entry.actor == operator
    assert (entry.before, entry.after) == ({"price_source": "override"}, {"price_source": "package"})


@pytest.mark.parametrize(
    ("action", "status", "moves"),
    [
        # nothing in flight: the key is retired at once, in the staff member's name too
        ("deactivate_keys", S.ACTIVE, [(S.ACTIVE, S.DISABLING), (S.DISABLING, S.INACTIVE)]),
        ("reactivate_keys", S.PAUSED, [(S.PAUSED, S.ACTIVE)]),
        ("revalidate_keys", S.EXHAUSTED, [(S.EXHAUSTED, S.PENDING)]),
    ],
)
def test_a_key_state_changed_by_staff_leaves_one_transition_with_the_actor(
    admin_client, operator, action, status, moves
):
    # given a member key (key states keep their own domain trail, ProviderKeyTransition)
    key = key_in_state(status)

    # when staff move it with an admin action
    response = admin_client.post(KEYS, {"action": action, ACTION_CHECKBOX_NAME: [key.pk]})
    assert response.status_code == 302

    # then a row per move records the staff member, the move and the time (a verification that
    # follows is the system's)
    transitions = ProviderKeyTransition.objects.filter(key=key, actor=operator).order_by("id")
    assert [(t.from_status, t.to_status) for t in transitions] == moves
    assert all(t.at is not None for t in transitions)


def test_a_write_without_a_request_is_audited_without_an_actor():
    # given a command or a task changing a provider (no signed-in user)
    provider = ProviderFactory(pool_clearance=Provider.PoolClearance.PENDING)

    Provider.objects.filter(pk=provider.pk).update(is_active=False)

    entries = audit_trail(provider, event_model=ProviderEvent)
    assert [e.action for e in entries] == ["insert", "update"]
    assert entries[-1].actor is None
    assert (entries[-1].before, entries[-1].after) == ({"is_active": True}, {"is_active": False})


def test_refresh_prices_names_itself_in_the_trail():
    # given a package-priced model whose price has drifted from the package
    call_command("sync_providers", stdout=io.StringIO())
    call_command("refresh_prices", provider=["groq"], stdout=io.StringIO())
    model = ProviderModel.objects.get(provider__slug="groq", name="llama-3.1-8b-instant")
    ProviderModel.objects.filter(pk=model.pk).update(input_price=1, output_price=1, price_source="package")
    since = _last_id(ProviderModelEvent)

    # when refresh_prices runs
    call_command("refresh_prices", provider=["groq"], stdout=io.StringIO())

    # then its change of that model is recorded as the command's, with no actor
    [entry] = [audit_entry(e) for e in _new_events(ProviderModelEvent, since) if e.pgh_obj_id == model.pk]
    assert (entry.actor, entry.origin) == (None, "manage.py refresh_prices")
    assert entry.before == {"input_price": 1, "output_price": 1}
    assert entry.after == {"input_price": 50_000_000, "output_price": 80_000_000}


def test_an_unaudited_column_changing_writes_nothing():
    # given a provider whose name (not a decision about money or serving) changes
    provider = ProviderFactory()
    since = _last_id(ProviderEvent)

    Provider.objects.filter(pk=provider.pk).update(name="Renamed")

    assert _new_events(ProviderEvent, since) == []


def test_the_audit_trail_is_read_only_in_the_admin_and_in_the_database(admin_client, operator):
    # given one audited change
    provider = ProviderFactory(pool_clearance=Provider.PoolClearance.PENDING)
    admin_client.post(PROVIDERS, {"action": "clear_for_pool", ACTION_CHECKBOX_NAME: [provider.pk]})
    event = ProviderEvent.objects.latest("pgh_id")

    # then the admin lists it with the actor and before/after, and offers no way to change it
    page = admin_client.get("/admin/keys/providerevent/")
    assert page.status_code == 200
    assert operator.email in page.content.decode() and "pool_clearance=cleared" in page.content.decode()
    assert admin_client.get("/admin/keys/providerevent/add/").status_code == 403
    assert admin_client.post(f"/admin/keys/providerevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ProviderEvent.objects.filter(pk=event.pk).exists()
    # and the table refuses UPDATE and DELETE, whoever asks
    for statement in ("DELETE FROM keys_providerevent", "UPDATE keys_providerevent SET pool_clearance = 'x'"):
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
