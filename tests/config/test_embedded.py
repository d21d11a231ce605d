"""scripts/embedded.py: the embedded PostgreSQL behind `make run` and `make test`.

CI runs the suite on its own PostgreSQL service, so these tests are where the embedded default's
life cycle is proven there: each starts the launcher on a data directory of its own.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = [sys.executable, str(ROOT / "scripts" / "embedded.py")]

# Counts the rows of a table in the embedded database after adding one: proves the data persists.
COUNT_ROWS = """
import os, psycopg
with psycopg.connect(os.environ["DATABASE_URL"].replace("postgres://", "postgresql://"), autocommit=True) as c:
    c.execute("CREATE TABLE IF NOT EXISTS visits (n int)")
    c.execute("INSERT INTO visits VALUES (1)")
    print(c.execute("SELECT count(*) FROM visits").fetchone()[0])
"""


def _env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(HEADROOM_PGDATA=str(tmp_path / "pgdata"), DJANGO_ENV_FILE=str(tmp_path / "no.env"), **extra)
    return env


def _servers_on(pgdata: Path) -> list[int]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "postgres" and str(pgdata) in " ".join(process.info["cmdline"] or []):
            found.append(process.pid)
    return found


def _launch(tmp_path, *command, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LAUNCHER, *command], env=_env(tmp_path, **extra), capture_output=True, text=True, timeout=120
    )


def test_the_database_persists_across_runs_and_no_server_outlives_its_command(tmp_path):
    first = _launch(tmp_path, sys.executable, "-c", COUNT_ROWS)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1] == "1"
    assert "embedded PostgreSQL ready" in first.stdout
    assert _servers_on(tmp_path / "pgdata") == []

    second = _launch(tmp_path, sys.executable, "-c", COUNT_ROWS)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().splitlines()[-1] == "2"
    assert _servers_on(tmp_path / "pgdata") == []


def test_the_command_exit_status_is_the_launchers(tmp_path):
    result = _launch(tmp_path, sys.executable, "-c", "import sys; sys.exit(3)")
    assert result.returncode == 3


def test_sigterm_reaches_the_command_and_the_server_stops(tmp_path):
    script = "import time; print('ready', flush=True); time.sleep(60)"
    child = subprocess.Popen(
        [*LAUNCHER, sys.executable, "-c", script], env=_env(tmp_path), stdout=subprocess.PIPE, text=True
    )
    try:
        while "ready" not in child.stdout.readline():
            assert child.poll() is None
        assert _servers_on(tmp_path / "pgdata")
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 128 + signal.SIGTERM
    finally:
        child.kill()
    deadline = time.monotonic() + 10
    while _servers_on(tmp_path / "pgdata") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _servers_on(tmp_path / "pgdata") == []


def test_with_a_database_url_it_starts_nothing(tmp_path):
    given = "postgres://someone@db.internal:5432/elsewhere"
    result = _launch(tmp_path, sys.executable, "-c", "import os; print(os.environ['DATABASE_URL'])", DATABASE_URL=given)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == given
    assert not (tmp_path / "pgdata").exists()


def test_redis_on_request_is_private_and_removed_afterwards(tmp_path):
    show = "import os, redis; r = redis.Redis.from_url(os.environ['REDIS_URL']); print(r.ping(), os.environ['REDIS_URL'])"
    result = _launch(tmp_path, "--redis", sys.executable, "-c", show)
    assert result.returncode == 0, result.stderr
    pong, url = result.stdout.strip().splitlines()[-1].split()
    assert pong == "True"
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
