"""Every management endpoint answers errors in one shape: {"detail", "code"} (+ "fields" for validation)."""

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_unauthenticated_is_401_in_the_shape(client):
    response = client.get("/api/v1/keys")
    assert response.status_code == 401
    assert response.json() == {
        "detail": "Authentication credentials were not provided.",
        "code": "not_authenticated",
    }
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("url", ["/api/v1/keys/999999", "/api/v1/api-keys/999999", "/api/v1/payouts/withdrawals/999999"])
def test_not_found_is_404_in_the_shape_and_says_nothing_more(authed_client, url):
    response = authed_client.get(url)
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found.", "code": "not_found"}


def test_a_wrong_method_is_405_in_the_shape(authed_client):
    response = authed_client.put("/api/v1/me", {}, format="json")
    assert response.status_code == 405
    assert response.json() == {"detail": 'Method "PUT" not allowed.', "code": "method_not_allowed"}


def test_malformed_json_is_400_in_the_shape(authed_client):
    response = authed_client.post("/api/v1/api-keys", data=b"{", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"
    assert set(response.json()) == {"detail", "code"}


def test_a_validation_error_names_its_fields(authed_client):
    response = authed_client.post("/api/v1/api-keys", {"name": "", "monthly_limit": "-1"}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"detail", "code", "fields"}
    assert body["code"] == "invalid"
    assert set(body["fields"]) == {"name", "monthly_limit"}
    first = next(iter(body["fields"]))
    assert body["detail"] == f"{first}: {body['fields'][first][0]}"


def test_a_query_parameter_error_names_it(authed_client):
    response = authed_client.get("/api/v1/exchange/earnings/daily", {"key": "x"})
    assert response.status_code == 400
    assert response.json()["fields"] == {"key": ["key must be the id of one of your provider keys."]}


def test_a_service_refusal_carries_its_code_and_status(authed_client):
    # given a payout refused by the payouts service (nothing frozen to convert)
    response = authed_client.post("/api/v1/payouts/conversions", {"amount": "1.00"}, format="json")
    # then the view answers the service's code in the same shape
    assert response.status_code == 400
    assert response.json()["code"] == "insufficient_balance"


def test_the_schema_describes_the_error_shape():
    schema = APIClient().get("/api/v1/schema", HTTP_ACCEPT="application/json").json()
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"detail", "code"}
    refusal = schema["paths"]["/api/v1/payouts/conversions"]["post"]["responses"]["400"]
    assert refusal["content"]["application/json"]["schema"]["$ref"].endswith("/ValidationError")


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/no-such-thing", "/api/v1/keys/not-a-number/", "/api/v2/"])
def test_an_unknown_api_url_is_a_json_404(authed_client, settings, path):
    settings.DEBUG = False
    response = authed_client.get(path)
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found.", "code": "not_found"}


@pytest.mark.django_db
def test_an_unknown_page_is_still_an_html_404(client, settings):
    settings.DEBUG = False
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_an_unexpected_error_under_the_api_is_json_and_a_page_stays_html(rf):
    from core.views import server_error

    api = server_error(rf.get("/api/v1/keys/"))
    assert api.status_code == 500 and api["Content-Type"] == "application/json"
    page = server_error(rf.get("/dashboard/"))
    assert page.status_code == 500 and page["Content-Type"].startswith("text/html")
