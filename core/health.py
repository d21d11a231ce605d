"""Liveness and readiness for load balancers and orchestrators, on django-health-check.

`/healthz` answers while the process serves at all (no dependency is asked: a probe that restarts a
gateway because the database blinked would turn a blip into an outage). `/readyz` asks what a request
needs: PostgreSQL, the cache and the Celery broker (Redis, when configured) and every migration this
code ships applied — a process started before `migrate` ran must not get traffic.
"""

import dataclasses

from django.conf import settings
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.http import JsonResponse
from health_check.base import HealthCheck
from health_check.checks import Cache, Database
from health_check.contrib.redis import Redis
from health_check.exceptions import ServiceUnavailable
from health_check.views import HealthCheckView
from redis.asyncio import Redis as RedisClient

_migrated: set[str] = set()  # aliases found fully migrated: this code's migrations stay applied


@dataclasses.dataclass
class ClosingDatabase(Database):
    """django-health-check runs synchronous checks on the event loop's executor threads, where Django
    never closes a connection: close it after each probe rather than keep one open per thread."""

    def run(self):
        try:
            super().run()
        finally:
            connections[self.alias].close()


@dataclasses.dataclass
class MigrationsApplied(HealthCheck):
    alias: str = "default"

    def run(self):
        if self.alias in _migrated:
            return
        try:
            executor = MigrationExecutor(connections[self.alias])
            pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
        finally:
            connections[self.alias].close()  # as ClosingDatabase
        if pending:
            raise ServiceUnavailable(f"{len(pending)} migration(s) not applied: run `manage.py migrate`")
        _migrated.add(self.alias)


def healthz(request):
    return JsonResponse({"status": "ok"})


class ReadyView(HealthCheckView):
    def get_checks(self):
        yield ClosingDatabase()
        yield Cache()
        broker = settings.CELERY_BROKER_URL
        if broker.startswith(("redis://", "rediss://")):
            yield Redis(client_factory=lambda: RedisClient.from_url(broker))
        yield MigrationsApplied()
