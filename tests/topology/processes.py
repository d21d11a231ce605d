"""Start Headroom's real processes from a test, and leave none behind.

One module for every test that needs the processes a deployment runs (the gateway's uvicorn workers,
the Celery worker, beat, and under `make run` the private Redis) rather than a server in a thread:

- `start_production(tmp_path, web_workers=N)`: `honcho start` on the repository's Procfile, exactly the
  command of the README's "Production" section: N uvicorn gateway workers on one port, one Celery
  worker, one beat, against DATABASE_URL and REDIS_URL.
- `start_make_run(tmp_path)`: what `make run` runs once it has installed and written `.env`:
  `scripts/embedded.py --redis make serve` — migrate, sync_providers, refresh_prices, seed_demo, then the
  same Procfile, with a private Redis that embedded.py starts and removes.
- `Launched`: the running tree. `wait_ready()` polls /readyz; `stop()` sends SIGTERM to the launcher (it
  stops its children: honcho signals each process group, embedded.py stops Redis), or SIGINT to its
  group as Ctrl-C does, then SIGKILLs every descendant it ever saw that is still alive and returns
  those, so a test can assert a clean stop and a failed or interrupted test leaves no process behind.
  Use it as a context manager.
- `children_env(tmp_path, ...)`: the environment those processes get: the pytest test database,
  production-like local settings (see there), the test settings' throwaway secrets (so the test process
  reads what the servers write), short beat intervals (HEADROOM_BEAT_SCALE) and files under tmp_path.
- `test_database_url()`, `free_port()`, `wait_until(predicate, timeout, what)`.

Both need committed data: use them from tests with `transactional_db`, and stop the processes before
pytest-django empties the tables (a fixture that depends on `transactional_db` tears down first). Each
launcher writes its output to `<tmp_path>/<name>.log`; `Launched.log()` returns it for failure messages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
# The virtualenv running the tests (the shared one, or `make test`'s .venv): its bin/ goes first on PATH
# so that the Procfile's `python -m …` and make's $(VENV) name the same interpreter.
VENV = Path(sys.executable).parent.parent
# Every periodic task runs 50 times as often as in production: the one-minute sweeps every 1.2 s.
BEAT_SCALE = "0.02"
START_TIMEOUT_S = 120.0  # make serve migrates and loads the catalogue first; two CPUs may be shared
STOP_TIMEOUT_S = 20.0  # honcho itself SIGKILLs what has not stopped 5 s after its SIGTERM


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_url() -> str:
    """DATABASE_URL (the machine's server or the embedded one, TCP or a socket directory), naming the
    test database that pytest-django made from it."""
    from django.db import connection

    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path="/" + connection.settings_dict["NAME"]))


test_database_url.__test__ = False  # a helper, not a test, despite its name


def wait_until(predicate, *, timeout: float, what: str, every: float = 0.2):
    """Poll `predicate` until it returns something truthy (returned); fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def children_env(tmp_path: Path, *, port: int, web_workers: int = 1, redis: bool = True, **extra: str) -> dict:
    """The environment of the launched processes.

    Settings: `config.settings.local` with DEBUG off, the Redis cache and broker: production's settings
    but for the two things a test on one machine cannot have — HTTPS (production redirects to it and
    marks cookies secure) and a public provider (production refuses loopback upstreams outright; local
    lets HEADROOM_ALLOW_PRIVATE_UPSTREAMS reach the fake provider on 127.0.0.1). `redis=False` leaves
    REDIS_URL unset, as `make run` finds it.
    """
    from django.conf import settings

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "HEADROOM_", "PYTEST_"))}
    env.update(
        PATH=f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        DJANGO_SETTINGS_MODULE="config.settings.local",
        DJANGO_DEBUG="false",
        DJANGO_ENV_FILE=str(tmp_path / "no.env"),  # never the checkout's .env
        DJANGO_SECRET_KEY=settings.SECRET_KEY,
        HEADROOM_FIELD_ENCRYPTION_KEYS=",".join(settings.HEADROOM_FIELD_ENCRYPTION_KEYS),
        DATABASE_URL=test_database_url(),
        HEADROOM_BEAT_SCALE=BEAT_SCALE,
        HEADROOM_BEAT_SCHEDULE_FILE=str(tmp_path / "celerybeat-schedule"),
        HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY=str(web_workers),
        PYTHONUNBUFFERED="1",
    )
    if not redis:
        env.pop("REDIS_URL", None)
    elif not env.get("REDIS_URL"):
        raise RuntimeError("REDIS_URL is unset: run the tests through `make test` or `.ci/run`")
    env.update(extra)
    return env


class Launched:
    """A launcher process and everything it started; see the module docstring."""

    def __init__(self, command: list[str], *, env: dict, log_path: Path, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        # Its own session: no terminal signal reaches it, and its group can be told apart from pytest's.
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self._root = psutil.Process(self.process.pid)
        self._seen: dict[int, psutil.Process] = {}

    def __enter__(self) -> Launched:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        """The live processes under the launcher now (each remembered, for `stop`)."""
        try:
            found = self._root.children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        for process in found:
            self._seen.setdefault(process.pid, process)
        return found

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until /readyz answers 200: the gateway serves, and PostgreSQL, Redis and migrations are fine."""

        def ready() -> bool:
            self.descendants()
            if self.process.poll() is not None:
                raise AssertionError(f"the launcher exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                return httpx.get(f"{self.url}/readyz?format=json", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(ready, timeout=timeout, what="/readyz", every=0.3)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.log()[-4000:]}") from None

    def stop(self, sig: int = signal.SIGTERM, *, group: bool = False) -> list[psutil.Process]:
        """Send `sig` to the launcher (with `group`, to its whole process group, as Ctrl-C at a terminal
        does) and wait for it to exit; then kill every descendant still alive 10 s later and return
        those, so a caller can assert that the launcher stopped them all by itself. Idempotent."""
        self.descendants()
        if self.process.poll() is None:
            if group:
                os.killpg(self.process.pid, sig)  # its own session: the group is the launcher's pid
            else:
                self.process.send_signal(sig)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # Whatever outlived its launcher (a child in a session of its own, a pool process) goes now.
        _, survivors = psutil.wait_procs(list(self._seen.values()), timeout=10)
        for process in survivors:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(survivors, timeout=10)
        self._log.close()
        return survivors


def start_production(tmp_path: Path, *, web_workers: int = 2, **extra: str) -> Launched:
    """The README's production command (honcho on the Procfile), `web_workers` gateway workers."""
    port = free_port()
    # The README: with several workers, a metrics directory they share, empty when they start.
    metrics = tmp_path / "prometheus"
    metrics.mkdir()
    env = children_env(tmp_path, port=port, web_workers=web_workers, PROMETHEUS_MULTIPROC_DIR=str(metrics), **extra)
    return Launched([str(VENV / "bin" / "honcho"), "start", "--env", "/dev/null"], env=env,
                    log_path=tmp_path / "production.log", port=port)


def start_make_run(tmp_path: Path, **extra: str) -> Launched:
    """`make run` past its install and `.env` steps: embedded.py starts a private Redis (REDIS_URL is
    unset) and runs `make serve` against the test database."""
    port = free_port()
    env = children_env(tmp_path, port=port, redis=False, **{"DJANGO_DEBUG": "true", **extra})  # as .env has it
    command = [sys.executable, "scripts/embedded.py", "--redis", "make", "--no-print-directory", "serve",
               f"VENV={VENV}", f"PORT={port}", "HOST=127.0.0.1"]
    return Launched(command, env=env, log_path=tmp_path / "make-run.log", port=port)
