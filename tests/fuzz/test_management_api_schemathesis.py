"""schemathesis against the management API's own OpenAPI schema, in-process, signed in as a member.

Every operation gets bounded, derandomized examples (valid and invalid bodies, parameters, headers):
no answer may be a 5xx, and every answer must match what the schema says of its status. A failure
prints the request as curl; rerun with `pytest tests/fuzz -x`.
"""

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

schema = schemathesis.openapi.from_wsgi("/api/v1/schema?format=json", get_wsgi_application())


@pytest.fixture
def session_token(transactional_db):
    from django.test import Client

    from tests.accounts.factories import UserFactory

    user = UserFactory(email="fuzz@example.com")
    response = Client().post(
        "/_allauth/app/v1/auth/login", {"email": user.email, "password": "correct-horse-battery-staple"},
        content_type="application/json",
    )
    return response.json()["meta"]["session_token"]


@schema.parametrize()
@settings(max_examples=15, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_no_input_breaks_the_management_api(case, session_token):
    response = case.call(headers={"X-Session-Token": session_token})
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
