"""Payouts' gauges for Prometheus, read from PostgreSQL at scrape time (served by config/metrics.py)."""

from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily

from payouts.models import Conversion, Withdrawal


class PayoutsCollector:
    def collect(self):
        yield GaugeMetricFamily("headroom_conversions", "Conversions made (frozen to main).",
                                value=Conversion.objects.count())
        withdrawals = GaugeMetricFamily("headroom_withdrawals", "Withdrawals by state.", labels=["state"])
        for row in Withdrawal.objects.values("state").annotate(n=Count("id")).order_by():
            withdrawals.add_metric([row["state"]], row["n"])
        yield withdrawals
