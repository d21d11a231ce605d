"""Prometheus metrics and the gateway's one log line per request.

Counted per request, in the gateway process that served it (prometheus-client; with several uvicorn
workers set PROMETHEUS_MULTIPROC_DIR to a directory they share, emptied at each start, and `/metrics`
sums every worker's files): requests by endpoint, route kind, provider and status; latency by endpoint
and route. Read from PostgreSQL when `/metrics` is scraped (the same for every worker, so not counted
per process): keys by provider and state, the pool's size, holds and leases open and the age of the
oldest hold (settlement lag: a request in flight that long, or one a crashed process left); payouts
adds its own (payouts/metrics.py), and config/metrics.py serves them all.

The log line (`headroom.gateway`, INFO) carries the request id, endpoint, route, provider, status and
duration — never the API key, a provider secret, a prompt or the client's address; production
settings write it as JSON.
"""

import logging
import time
from contextvars import ContextVar

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from billing.models import BalanceHold
from keys.models import ProviderKey, ProviderKeyLease
from keys.selectors import IN_POOL

logger = logging.getLogger("headroom.gateway")

REQUESTS = Counter(
    "headroom_gateway_requests", "Gateway requests answered.", ["endpoint", "route", "provider", "status"]
)
LATENCY = Histogram(
    "headroom_gateway_request_seconds", "Time to the end of a gateway answer (streams: the last byte).",
    ["endpoint", "route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)

# What the request learnt on its way (set by the gateway once known): read when it ends.
served_by: ContextVar[tuple[str, str]] = ContextVar("served_by", default=("", ""))  # (route, provider)
request_id: ContextVar[str] = ContextVar("request_id", default="")


def gateway_request_done(*, endpoint: str, status: int, started: float) -> None:
    """Count one answered /v1 request and write its log line."""
    route, provider = served_by.get()
    seconds = time.monotonic() - started
    REQUESTS.labels(endpoint, route or "none", provider or "none", str(status)).inc()
    LATENCY.labels(endpoint, route or "none").observe(seconds)
    if logger.isEnabledFor(logging.INFO):
        logger.info(
            "%s %s %s %s %.1fms", request_id.get() or "-", endpoint, route or "-", status, seconds * 1000,
            extra={"request_id": request_id.get() or None, "endpoint": endpoint, "route": route or None,
                   "provider": provider or None, "status": status, "duration_ms": round(seconds * 1000, 1)},
        )


class GatewayStateCollector:
    """The gateway's gauges read from PostgreSQL at scrape time (see the module docstring)."""

    def collect(self):
        keys = GaugeMetricFamily("headroom_provider_keys", "Provider keys by provider and state.",
                                 labels=["provider", "state"])
        for row in ProviderKey.objects.values("provider__slug", "status").annotate(n=Count("id")).order_by():
            keys.add_metric([row["provider__slug"], row["status"]], row["n"])
        yield keys
        pool = GaugeMetricFamily("headroom_pool_keys", "Keys serving the shared pool, by provider.",
                                 labels=["provider"])
        for row in ProviderKey.objects.filter(IN_POOL).values("provider__slug").annotate(n=Count("id")).order_by():
            pool.add_metric([row["provider__slug"]], row["n"])
        yield pool
        holds = BalanceHold.objects.aggregate(n=Count("id"), oldest=Min("created_at"))
        yield GaugeMetricFamily("headroom_holds_open", "Balance holds of requests in flight.", value=holds["n"])
        lag = (timezone.now() - holds["oldest"]).total_seconds() if holds["oldest"] else 0.0
        yield GaugeMetricFamily("headroom_settlement_lag_seconds", "Age of the oldest open hold.", value=lag)
        yield GaugeMetricFamily("headroom_leases_open", "Provider keys' leases of requests in flight.",
                                value=ProviderKeyLease.objects.count())
