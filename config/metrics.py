"""`/metrics`: every app's metrics in Prometheus' text format (the project composes them, as urls.py
composes the apps' routes)."""

import os

from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from payouts.metrics import PayoutsCollector
from pool.metrics import LATENCY, REQUESTS, GatewayStateCollector


def metrics_view(request) -> HttpResponse:
    """Every worker's counters (multiprocess mode, PROMETHEUS_MULTIPROC_DIR) and the database gauges.
    Restrict it at the proxy: it names providers and volumes, never a member or a secret."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(REQUESTS)
        registry.register(LATENCY)
    registry.register(GatewayStateCollector())
    registry.register(PayoutsCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
