"""Liveness and readiness probes: /healthz asks nothing, /readyz asks what a request needs."""

import pytest
from django.test import Client, override_settings


def test_healthz_answers_while_the_process_serves():
    response = Client().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_checks_the_database_cache_broker_and_migrations():
    response = Client().get("/readyz", HTTP_ACCEPT="application/json")
    assert response.status_code == 200, response.content
    checks = response.json()
    assert set(checks.values()) == {"OK"}
    names = " ".join(checks)
    assert "ClosingDatabase" in names and "Cache" in names and "MigrationsApplied" in names
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
@override_settings(CELERY_BROKER_URL="redis://127.0.0.1:9/0")  # nothing listens on the discard port
def test_readyz_is_not_ready_when_the_broker_is_unreachable():
    response = Client().get("/readyz?format=json")
    assert response.status_code == 500
    failing = {name: state for name, state in response.json().items() if state != "OK"}
    assert list(failing) and all("Redis" in name for name in failing), failing
