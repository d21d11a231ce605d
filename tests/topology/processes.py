"""Headroom's Procfile under honcho as a test's subprocess — on its own (`Topology`, production's way) or
through `make run` (`MakeRun`) — with every process it starts stopped when the test ends, whatever
happened.

    with Topology(env={...}, port=port, log=tmp_path / "honcho.log") as topology:
        topology.wait_healthy()
        ...

honcho starts each Procfile process in a process group of its own and stops them all when it is
stopped; the groups it names in its log ("web.1 started (pid=N)") are killed too if anything outlived
it (a SIGKILLed honcho, a child that ignored SIGTERM). The log holds every process's output, prefixed
by its name.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
STARTED = re.compile(r"(\S+) started \(pid=(\d+)\)")
STOP_TIMEOUT_S = 30


def database_url_for_subprocesses() -> str:
    """DATABASE_URL (the machine's server or the embedded one, TCP or a socket directory), naming the
    test database that pytest-django made from it: what a subprocess needs to see the test's data."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path="/" + connection.settings_dict["NAME"]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Topology:
    """`honcho start` of the Procfile, stopped as a supervisor stops it (SIGTERM to honcho)."""

    stop_signal = signal.SIGTERM
    whole_group = False  # the signal goes to honcho alone, which stops its children

    def __init__(self, *, env: dict[str, str], port: int, log: Path, processes: tuple[str, ...] = ()):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log
        # Not pytest's settings module: the caller names one, or the launcher's default applies.
        inherited = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        self.env = {**inherited, "HOST": "127.0.0.1", **env}
        self.env["PATH"] = f"{BIN}:{self.env.get('PATH', '')}"  # the virtualenv's uvicorn, celery and honcho
        self.command = self._command(processes)
        self.process: subprocess.Popen | None = None

    def _command(self, processes: tuple[str, ...]) -> list[str]:
        empty = self.log_path.with_name("honcho.env")
        empty.write_text("")  # not the checkout's .env (make run's development secrets)
        return [str(BIN / "honcho"), "start", "--no-colour", "--env", str(empty), "--port", str(self.port),
                *processes]

    def __enter__(self) -> Topology:
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> dict[str, int]:
        """The processes honcho started, by name (web.1, worker.1, beat.1)."""
        return {name: int(pid) for name, pid in STARTED.findall(self.log())}

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"honcho ended early:\n{self.log()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the gateway did not come up:\n{self.log()[-3000:]}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            if self.whole_group:
                os.killpg(self.process.pid, self.stop_signal)
            else:
                self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for pid in self.children().values():
            try:
                os.killpg(pid, signal.SIGKILL)  # nothing may outlive the test
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()
        self.process = None


class MakeRun(Topology):
    """`make run`, stopped as Ctrl-C at its terminal stops it (SIGINT to its whole process group)."""

    stop_signal = signal.SIGINT
    whole_group = True

    def _command(self, processes: tuple[str, ...]) -> list[str]:
        return ["make", "--no-print-directory", "run", f"PORT={self.port}", "HOST=127.0.0.1"]


def wait_for(predicate, *, timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(interval)
