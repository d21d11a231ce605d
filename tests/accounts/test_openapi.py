import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_schema_describes_the_management_api():
    response = Client().get("/api/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert {"/api/v1/me", "/api/v1/api-keys", "/api/v1/api-keys/{key_id}"} <= set(schema["paths"])


def test_docs_page_is_self_contained():
    response = Client().get("/api/v1/docs")
    assert response.status_code == 200
    assert b"swagger-ui" in response.content
    assert b"cdn.jsdelivr" not in response.content  # served from the sidecar package, no CDN
