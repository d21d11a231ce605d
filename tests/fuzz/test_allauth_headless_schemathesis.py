"""schemathesis against allauth's headless API (sign-up, log-in, codes, passwords, sessions), from the
OpenAPI document allauth generates for this project's own settings.

These endpoints are public: anyone may send them anything. No answer may be a 5xx. (Only that: the
document is allauth's, and where allauth's answers differ from its own document, that is allauth's to
fix, not an input Headroom mishandles.)
"""

from unittest import mock

import schemathesis
from allauth.headless.spec.internal import schema as allauth_spec
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

# allauth re-roots its document at the URL that serves it, which Headroom does not serve
# (HEADLESS_SERVE_SPECIFICATION off); the document's own root, /_allauth, is where Headroom mounts it.
with mock.patch.object(allauth_spec, "chroot", lambda spec: None):
    schema = schemathesis.openapi.from_dict(allauth_spec.get_schema())
schema.app = get_wsgi_application()


@schema.parametrize()
@settings(max_examples=10, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_no_input_breaks_sign_in(case, transactional_db):
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
