"""schemathesis against the management API's own OpenAPI schema, in-process, signed in as a member.

Every operation gets bounded, derandomized examples (valid and invalid bodies, parameters, headers):
no answer may be a 5xx, and every answer must match what the schema says of its status. Generated ids
almost never name a row and a new member's lists are empty, so a second pass runs for a member who owns
an API key, a provider key and a withdrawal, with every path id aimed at them: fuzzed bodies meet real
rows and lists answer with them. A failure prints the request as
curl; rerun with `pytest tests/fuzz -x`.
"""

import pytest
import schemathesis
from django.apps import apps
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

schema = schemathesis.openapi.from_wsgi("/api/v1/schema?format=json", get_wsgi_application())


FUZZ = settings(
    max_examples=15, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture
def member(transactional_db):
    from tests.accounts.factories import UserFactory

    return UserFactory(email="fuzz@example.com")


@pytest.fixture
def session_token(member):
    from django.test import Client

    response = Client().post(
        "/_allauth/app/v1/auth/login", {"email": member.email, "password": "correct-horse-battery-staple"},
        content_type="application/json",
    )
    return response.json()["meta"]["session_token"]


@pytest.fixture
def own_ids(member) -> dict[str, int]:
    """The member's own rows, by the path parameter that names them."""
    from accounts.models import ApiKey
    from accounts.services import api_key_create
    from core.money import parse_usd
    from payouts.services import withdrawal_request
    from tests.keys.factories import key_in_state
    from tests.payouts.factories import ADDRESSES, fund_frozen

    from tests.payouts.conftest import _seed

    _seed.seed(apps, None)  # the payout networks: transactional tests flush the migration's rows
    api_key_create(user=member, name="sdk", scopes=["gateway", "read"])
    provider_key = key_in_state("active", owner=member, byok=True)
    fund_frozen(member, "20.00")
    withdrawal = withdrawal_request(owner=member, actor=member, amount=parse_usd("10.00"), network="USDT-TRC20",
                                    address=ADDRESSES["USDT-TRC20"])
    return {"key_id": provider_key.pk, "withdrawal_id": withdrawal.pk,
            "api_key_id": ApiKey.objects.get(user=member).pk}


@schema.parametrize()
@FUZZ
def test_no_input_breaks_the_management_api(case, session_token):
    response = case.call(headers={"X-Session-Token": session_token})
    case.validate_response(response, checks=CHECKS)


@schema.parametrize()
@FUZZ
def test_no_input_breaks_the_management_api_on_the_members_own_objects(case, session_token, own_ids):
    for name in case.path_parameters or {}:
        # /api-keys/{key_id} names an API key, the others a provider key (or a withdrawal)
        own = own_ids["api_key_id"] if name == "key_id" and "api-keys" in case.path else own_ids.get(name)
        if own is not None:
            case.path_parameters[name] = own
    response = case.call(headers={"X-Session-Token": session_token})
    case.validate_response(response, checks=CHECKS)
