"""Benchmark of the /v1 hot path: the fake provider directly, LiteLLM's proxy and Headroom, on loopback.

    .venv/bin/python bench/run.py            # the full run (about 5 minutes once LiteLLM is installed)
    .venv/bin/python bench/run.py --quick    # a short smoke run (about 2 minutes)

Everything it starts is a child process on 127.0.0.1 in its own process group, bounded in time, and
stopped again at the end, on Ctrl-C, on SIGTERM and on overtime (--max-minutes). The PostgreSQL
database it creates (headroom_bench_<pid>) is dropped at the end. See bench/README.md for the setup,
the targets and the latest results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = ROOT / ".venv" / "bin" / "python"
LITELLM_VENV = BENCH / ".litellm-venv"
LOG_DIR = BENCH / ".logs"
README = BENCH / "README.md"
RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"

HOST = "127.0.0.1"
DELAYS_MS = (0, 50)
CHUNKS = 20
LOADS = (("json", 1), ("json", 16), ("json", 64), ("stream", 16))  # (kind, concurrency)
FLOOR_LOADS = (("json", 1), ("json", 16))  # the floor (bench/floor.py) answers non-streaming requests only
MODEL_DIRECT = "tiny"
MESSAGES = [{"role": "user", "content": "hello there world"}]
MAX_TOKENS = 32
REQUEST_TIMEOUT_S = 60
REDIS_URL = "redis://127.0.0.1:6379/13"
PG = ["-h", HOST, "-U", "postgres"]
FAKE_SECRET = "sk-bench-upstream-" + "x" * 24
ERROR_BODIES_KEPT = 3

# The targets (one worker core, every request settled in PostgreSQL before its response ends).
TARGET_ADDED_P50_MS = 3.0
TARGET_RPS_JSON = 500
TARGET_RPS_STREAM = 400
TARGET_RSS_MB = 150


@dataclass(frozen=True)
class Timing:
    warmup_s: float
    measure_s: float
    profile_s: float


FULL = Timing(warmup_s=1.5, measure_s=8.0, profile_s=12.0)
QUICK = Timing(warmup_s=0.5, measure_s=2.0, profile_s=5.0)


# --- child processes ------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    stop_signal: int
    log: Path


class Children:
    """Every process the benchmark starts: each in its own session, so one group per child to stop."""

    def __init__(self, pin: bool, log_dir: Path = LOG_DIR):
        self.pin = pin
        self.log_dir = log_dir
        self.running: list[Child] = []

    def start(self, name: str, cmd: list[str], env: dict, *, core: int | None, stop_signal=signal.SIGINT,
              cwd: Path = ROOT) -> Child:
        if self.pin and core is not None:
            cmd = ["taskset", "-c", str(core), *cmd]
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        child = Child(name, proc, stop_signal, log)
        self.running.append(child)
        return child

    def stop(self, child: Child, timeout: float = 20.0) -> None:
        if child not in self.running:
            return
        proc = child.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(child.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"  {child.name} ignored {signal.Signals(child.stop_signal).name}; terminating its group")
        # Whatever it left behind in its own process group (workers, helpers).
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if not _group_alive(proc.pid):
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            deadline = time.monotonic() + wait
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1)
        self.running.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.running)):
            self.stop(child)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader keeps the group "alive" until reaped; count only live members.
    for pid in _pids_in_group(pgid):
        state = _proc_field(pid, "State")
        if state and not state.startswith("Z"):
            return True
    return False


def _pids_in_group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _read(entry / "stat")
            if stat and int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                found.append(int(entry.name))
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _proc_field(pid: int, name: str) -> str | None:
    for line in (_read(Path(f"/proc/{pid}/status")) or "").splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return None


def process_tree(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _read(entry / "stat")
            if stat:
                parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def peak_rss_mb(pid: int) -> float | None:
    """The largest VmHWM (peak resident set) among the process and its descendants, in MB."""
    peaks = []
    for member in process_tree(pid):
        value = _proc_field(member, "VmHWM")
        if value:
            peaks.append(int(value.split()[0]) / 1024)
    return max(peaks) if peaks else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process and its live descendants (threads included)."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for member in process_tree(pid):
        stat = _read(Path(f"/proc/{member}/stat"))
        if stat:
            fields = stat.rsplit(")", 1)[1].split()
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
    return user, system


# --- small helpers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def http_get(url: str, headers: dict | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_ready(child: Child, url: str, *, timeout: float, headers: dict | None = None, expect: bytes = b"") -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode} while starting:\n{tail(child.log)}")
        try:
            status, body = http_get(url, headers)
            if status == 200 and expect in body:
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as error:
            last = str(error)
        time.sleep(0.25)
    raise RuntimeError(f"{child.name} not ready after {timeout:.0f}s ({last}):\n{tail(child.log)}")


def tail(path: Path, lines: int = 30) -> str:
    text = _read(path) or ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def run(cmd: list, env: dict | None = None, timeout: float = 300, log: Path | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=timeout,
    )
    if log is not None:
        log.write_text(f"$ {' '.join(map(str, cmd))}\n{result.stdout}\n{result.stderr}")
    return result


def base_env() -> dict:
    """A small, explicit environment: nothing of the caller's Django/database settings leaks in."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "PIP_CERT", "PIP_DEFAULT_TIMEOUT",
            "PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_DISABLE_PIP_VERSION_CHECK")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


# --- the load generator -----------------------------------------------------------------------------


@dataclass
class Cell:
    target: str
    delay_ms: int
    kind: str  # json | stream
    concurrency: int
    requests: int = 0
    errors: int = 0
    rps: float = 0.0
    p50: float | None = None
    p99: float | None = None
    ttft_p50: float | None = None
    added_p50: float | None = None
    added_p99: float | None = None
    server_cpu_pct: float | None = None
    server_cpu_ms: float | None = None
    postgres_cpu_ms: float | None = None
    server_system_pct: float | None = None  # the kernel's share of the server's CPU
    gen_cpu_pct: float | None = None
    peak_rss_mb: float | None = None
    statuses: Counter = field(default_factory=Counter)  # every response, warm-up included
    error_kinds: Counter = field(default_factory=Counter)
    error_bodies: list = field(default_factory=list)
    errors_outside: int = 0

    @property
    def key(self) -> tuple:
        return (self.delay_ms, self.kind, self.concurrency)


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def postgres_backends(database: str) -> list[int]:
    """PostgreSQL's backend processes serving `database` (their command line names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            cmdline = _read(entry / "cmdline") or ""
            if cmdline.startswith("postgres: ") and f" {database} " in cmdline:
                found.append(int(entry.name))
    return found


def postgres_cpu_seconds(database: str | None) -> float | None:
    if not database:
        return None
    return sum(cpu_seconds(pid) for pid in postgres_backends(database))


@dataclass
class Snapshot:
    at: float
    server: float | None
    server_system: float | None
    postgres: float | None
    generator: float


def snapshot(server_pid: int | None, database: str | None) -> Snapshot:
    user, system = cpu_split(server_pid) if server_pid else (None, None)
    return Snapshot(time.perf_counter(), None if user is None else user + system, system,
                    postgres_cpu_seconds(database), time.process_time())


async def drive(cell: Cell, url: str, headers: dict, body: bytes, timing: Timing, server_pid: int | None,
                database: str | None = None) -> Cell:
    """Closed loop: `concurrency` workers, each sending its next request as soon as the last one ends.

    After the warm-up, the cell measures a fixed window: requests that end inside it count (their latency,
    req/s = count / window), and CPU is read at both edges of the window.
    """
    import aiohttp

    stream = cell.kind == "stream"
    clock = time.perf_counter
    latencies: list[float] = []
    ttfts: list[float] = []
    measure_from = clock() + timing.warmup_s
    measure_to = measure_from + timing.measure_s
    edges: list[Snapshot] = []

    async def mark_edges() -> None:
        for edge in (measure_from, measure_to):
            await asyncio.sleep(max(0.0, edge - clock()))
            edges.append(snapshot(server_pid, database))

    connector = aiohttp.TCPConnector(limit=cell.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:

        async def worker() -> None:
            while clock() < measure_to:
                began = clock()
                status, problem, first, data = None, None, None, b""
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        status = response.status
                        if stream and status == 200:
                            async for chunk in response.content.iter_any():
                                if first is None and b"data:" in chunk:
                                    first = clock()
                                data = (data + chunk)[-64:]
                            if b"[DONE]" not in data:
                                problem = "stream ended without [DONE]"
                        else:
                            data = await response.read()
                            if status == 200 and b'"choices"' not in data:
                                problem = "200 without choices"
                        if status != 200:
                            problem = f"HTTP {status}"
                            if len(cell.error_bodies) < ERROR_BODIES_KEPT:
                                cell.error_bodies.append(f"HTTP {status}: {data[:300].decode(errors='replace')}")
                except Exception as error:  # noqa: BLE001 - every client-side failure is counted, by kind
                    problem = f"{type(error).__name__}: {str(error)[:120]}"
                ended = clock()
                measured = measure_from <= ended <= measure_to
                cell.statuses[status or "no response"] += 1
                if problem is not None:
                    cell.error_kinds[problem] += 1
                    if measured:
                        cell.errors += 1
                    else:
                        cell.errors_outside += 1
                if measured:
                    latencies.append((ended - began) * 1000)
                    if first is not None:
                        ttfts.append((first - began) * 1000)

        await asyncio.gather(mark_edges(), *(worker() for _ in range(cell.concurrency)))

    done = max(len(latencies), 1)
    start, end = edges
    span = end.at - start.at
    if start.server is not None:
        cell.server_cpu_pct = 100 * (end.server - start.server) / span
        cell.server_cpu_ms = 1000 * (end.server - start.server) / done
        cell.server_system_pct = 100 * (end.server_system - start.server_system) / max(end.server - start.server, 1e-9)
    if start.postgres is not None:
        cell.postgres_cpu_ms = 1000 * (end.postgres - start.postgres) / done
    cell.gen_cpu_pct = 100 * (end.generator - start.generator) / span
    latencies.sort()
    ttfts.sort()
    cell.requests = len(latencies)
    cell.rps = len(latencies) / span
    cell.p50, cell.p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    cell.ttft_p50 = percentile(ttfts, 0.50) if stream else None
    return cell


def request_body(model: str, stream: bool) -> bytes:
    payload = {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    if stream:
        payload["stream"] = True
    return json.dumps(payload).encode()


def bench_target(name: str, api_key: str, endpoints: dict[int, tuple[str, str, int]], timing: Timing,
                 database: str | None = None, loads: tuple = LOADS) -> list[Cell]:
    """Every load against one target; `endpoints` maps the upstream delay to (URL, model, server pid)."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    cells = []
    for delay, (url, model, pid) in endpoints.items():
        for kind, concurrency in loads:
            cell = Cell(name, delay, kind, concurrency)
            if database:
                vacuum(database)
            asyncio_run(drive(cell, url, headers, request_body(model, kind == "stream"), timing, pid, database))
            print_cell(cell)
            cells.append(cell)
    for cell in cells:  # VmHWM is a lifetime peak: read once the target has served everything
        cell.peak_rss_mb = peak_rss_mb(endpoints[cell.delay_ms][2])
    return cells


def vacuum(database: str) -> None:
    """VACUUM the bench database before a cell, outside its window: this machine's PostgreSQL runs with
    autovacuum off, a production one does not. Without it the rows every request inserts and deletes
    (holds, key leases) pile up as dead rows and index entries, and each cell would measure the ones
    before it: after ~27,000 requests PostgreSQL's CPU per request had nearly doubled (1.40 -> 2.60 ms
    at concurrency 16), and a VACUUM brought it back."""
    done = run(["psql", *PG, "-d", database, "-qc", "VACUUM"], timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"VACUUM of {database} failed: {done.stderr.strip()}")


def start_uvicorn(children: Children, name: str, app: str, env: dict, *, headers: dict | None = None,
                  expect: bytes = b"", launcher: list[str] | None = None, cwd: Path = ROOT) -> tuple[Child, str]:
    """An ASGI app under uvicorn as Headroom runs in production: one worker, lifespan on, no access log,
    pinned to core 0. Ready when GET /v1/models answers 200 (with `expect` in its body). `launcher`
    replaces `python -m uvicorn` (bench/ab.py's bench/abserve.py takes uvicorn's own arguments)."""
    port = free_port()
    child = children.start(
        name,
        [*(launcher or [str(PY), "-m", "uvicorn"]), app, "--host", HOST, "--port", str(port),
         "--workers", "1", "--lifespan", "on", "--no-access-log", "--log-level", "warning"],
        env, core=0, stop_signal=signal.SIGINT, cwd=cwd,
    )
    url = f"http://{HOST}:{port}"
    wait_ready(child, f"{url}/v1/models", timeout=60, headers=headers, expect=expect)
    return child, url


def start_floor(children: Children, database: str, fakes: dict) -> tuple[Child, str]:
    """The floor (bench/floor.py), started like Headroom: same server, flags, core and database."""
    env = {**base_env(), "PYTHONPATH": str(ROOT), "FLOOR_DATABASE_URL": f"postgresql://postgres@{HOST}:5432/{database}",
           "FLOOR_UPSTREAM": f"{fakes[0][0]}/v1/chat/completions", "FLOOR_UPSTREAM_KEY": FAKE_SECRET}
    return start_uvicorn(children, "floor", "bench.floor:app", env)


def print_cell(cell: Cell) -> None:
    err = f"  ERRORS {cell.errors} (+{cell.errors_outside} outside the window)" if cell.error_kinds else ""
    pg = f"  PG {cell.postgres_cpu_ms:.2f} ms/req" if cell.postgres_cpu_ms is not None else ""
    print(f"  {cell.target:8} {cell.delay_ms:>2} ms {cell.kind:6} c={cell.concurrency:<3} {cell.rps:7.1f} req/s  "
          f"p50 {fmt(cell.p50)}  p99 {fmt(cell.p99)} ms  server CPU {fmt(cell.server_cpu_pct, 0)}% "
          f"{fmt(cell.server_cpu_ms, 2)} ms/req ({fmt(cell.server_system_pct, 0)}% sys){pg}  load gen CPU {fmt(cell.gen_cpu_pct, 0)}%{err}", flush=True)


def asyncio_run(coroutine):
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


# --- direct: the fake providers ---------------------------------------------------------------------


def start_fakes(children: Children, delays: tuple[int, ...] = DELAYS_MS) -> dict[int, tuple[str, Child]]:
    fakes = {}
    for delay in delays:
        port = free_port()
        child = children.start(
            f"fake-{delay}ms",
            [str(PY), "-m", "tests.fakeprovider", "--host", HOST, "--port", str(port),
             "--delay-ms", str(delay), "--chunks", str(CHUNKS)],
            {**base_env(), "PYTHONPATH": str(ROOT)},
            core=1, stop_signal=signal.SIGINT,
        )
        fakes[delay] = (f"http://{HOST}:{port}", child)
    for delay, (url, child) in fakes.items():
        wait_ready(child, f"{url}/v1/models", timeout=30, headers={"Authorization": f"Bearer {FAKE_SECRET}"})
    return fakes


# --- LiteLLM ----------------------------------------------------------------------------------------


def litellm_install() -> tuple[Path | None, str]:
    """The proxy in its own virtualenv (bench/.litellm-venv), installed from PyPI once; (exe, version)."""
    exe = LITELLM_VENV / "bin" / "litellm"
    python = LITELLM_VENV / "bin" / "python"
    version_probe = [python, "-c", "import importlib.metadata as m; print(m.version('litellm'))"]
    if exe.exists():
        probe = run(version_probe, timeout=60)
        if probe.returncode == 0:
            return exe, probe.stdout.strip()
    print("installing litellm[proxy] from PyPI into bench/.litellm-venv (once; a few minutes) ...", flush=True)
    log = LOG_DIR / "litellm-install.log"
    try:
        made = run([PY, "-m", "venv", "--clear", LITELLM_VENV], timeout=120, log=log)
        if made.returncode != 0:
            return None, f"python -m venv failed:\n{tail(log)}"
        installed = run([LITELLM_VENV / "bin" / "pip", "install", "--quiet", "litellm[proxy]"], env=base_env(),
                        timeout=900, log=log)
    except subprocess.TimeoutExpired:
        return None, "pip install 'litellm[proxy]' took longer than 15 minutes"
    if installed.returncode != 0:
        return None, f"pip install 'litellm[proxy]' failed (exit {installed.returncode}):\n{tail(log, 15)}"
    probe = run(version_probe, timeout=60)
    if probe.returncode != 0 or not exe.exists():
        return None, f"litellm installed but not runnable:\n{probe.stderr[-800:]}"
    return exe, probe.stdout.strip()


def start_litellm(children: Children, exe: Path, fakes: dict, workdir: Path) -> tuple[Child, str, str]:
    master_key = "sk-bench-" + secrets.token_hex(16)  # LiteLLM refuses the documented sk-1234
    config = {
        "model_list": [
            {
                "model_name": f"tiny-{delay}ms",
                "litellm_params": {"model": f"openai/{MODEL_DIRECT}", "api_base": f"{url}/v1", "api_key": FAKE_SECRET},
            }
            for delay, (url, _) in fakes.items()
        ],
        "general_settings": {"master_key": master_key},
        "litellm_settings": {"drop_params": True},
    }
    path = workdir / "litellm-config.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    port = free_port()
    env = {**base_env(), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "True"}
    child = children.start(
        "litellm",
        [str(exe), "--config", str(path), "--host", HOST, "--port", str(port), "--num_workers", "1"],
        env, core=0, stop_signal=signal.SIGINT,
    )
    url = f"http://{HOST}:{port}"
    wait_ready(child, f"{url}/health/liveliness", timeout=180)
    return child, url, master_key


# --- Headroom ---------------------------------------------------------------------------------------


def headroom_env(database: str) -> dict:
    from cryptography.fernet import Fernet

    return {
        **base_env(),
        "PYTHONPATH": str(ROOT),
        "DJANGO_ENV_FILE": os.devnull,  # no developer .env: everything is set here
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "HEADROOM_FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "DJANGO_ALLOWED_HOSTS": HOST,
        "DATABASE_URL": f"postgres://postgres@{HOST}:5432/{database}",
        "REDIS_URL": REDIS_URL,
        "HEADROOM_RATE_LIMIT_PER_MINUTE": "0",
        "DJANGO_LOG_LEVEL": "WARNING",
    }


def headroom_prepare(env: dict, fakes: dict, *, root: Path = ROOT, script: Path = BENCH / "run.py",
                     log_dir: Path = LOG_DIR) -> str:
    """Migrate the fresh database and create providers, priced models, platform keys and a funded member.

    `root` is the checkout whose manage.py migrates (its own migrations) and `script` the run.py whose
    --django-setup seeds it; bench/ab.py passes a checkout of the ref under test and that ref's run.py."""
    migrated = run([PY, "manage.py", "migrate", "--noinput"], env=env, timeout=600, log=log_dir / "migrate.log",
                   cwd=root)
    if migrated.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{tail(log_dir / 'migrate.log')}")
    providers = json.dumps({f"fake{delay}": f"{url}/v1" for delay, (url, _) in fakes.items()})
    setup = run([PY, script, "--django-setup", providers], env={**env, "HEADROOM_CELERY_EAGER": "true"},
                timeout=300, log=log_dir / "setup.log", cwd=root)
    if setup.returncode != 0:
        raise RuntimeError(f"setup failed:\n{tail(log_dir / 'setup.log')}")
    return json.loads(setup.stdout.strip().splitlines()[-1])["api_key"]


def django_setup(providers: dict[str, str]) -> None:
    """Runs inside Django (bench settings): the same services the product and the tests use."""
    import django

    django.setup()
    from accounts.services import api_key_create, user_create
    from billing.models import Account, LedgerTransaction
    from core.money import parse_usd
    from billing.services import account_for_owner, ledger_transfer, platform_account
    from keys.models import Provider, ProviderKey, ProviderModel
    from keys.services import provider_key_create

    for slug, base_url in providers.items():
        provider = Provider(
            slug=slug, name=f"Bench {slug}", base_url=base_url, pool_clearance=Provider.PoolClearance.CLEARED,
            catalogue_managed=False,
        )
        provider.full_clean()  # the SSRF guard passes only because bench.settings allows loopback
        provider.save()
        ProviderModel.objects.create(provider=provider, name=MODEL_DIRECT, input_price=parse_usd("1"),
                                     output_price=parse_usd("2"))
        secret = f"sk-bench-{slug}-" + "x" * 24  # a secret is enrolled once platform-wide
        key = provider_key_create(owner=None, provider=provider, secret=secret, label="bench", actor=None)
        key.refresh_from_db()
        if key.status != ProviderKey.Status.ACTIVE:
            raise SystemExit(f"platform key for {slug} is {key.status}, not ACTIVE: {key.last_error}")
    user = user_create(email="bench@example.com", verified=True)
    ledger_transfer(
        source=platform_account(Account.Kind.ADJUSTMENTS),
        destination=account_for_owner(owner=user, kind=Account.Kind.MAIN),
        amount=parse_usd("1000000"),
        idempotency_key="bench-balance",
        kind=LedgerTransaction.Kind.ADJUSTMENT,
        memo="benchmark balance",
    )
    _, raw = api_key_create(user=user, name="bench")
    print(json.dumps({"api_key": raw}))


def django_count() -> None:
    """Runs inside Django: request records by outcome."""
    import django

    django.setup()
    from django.db.models import Count

    from pool.models import RequestRecord

    rows = RequestRecord.objects.values_list("outcome").annotate(n=Count("id"))
    print(json.dumps(dict(rows)))


def start_headroom(children: Children, env: dict, api_key: str, *, name: str = "headroom",
                   launcher: list[str] | None = None, cwd: Path = ROOT) -> tuple[Child, str]:
    return start_uvicorn(children, name, "config.asgi:application", env,
                         headers={"Authorization": f"Bearer {api_key}"}, expect=b"fake0/tiny",
                         launcher=launcher, cwd=cwd)


def headroom_verify(env: dict, answered: Counter, *, root: Path = ROOT, script: Path = BENCH / "run.py",
                    log_dir: Path = LOG_DIR) -> list[str]:
    """After the run: the ledger must check out, and every answer must have exactly one request record.

    A 200 is a succeeded record; a request refused before any work (401/402/404/429) has none, and one
    that failed upstream or found no key (5xx) is settled as a failed record with nothing charged.
    """
    problems = []
    checked = run([PY, "manage.py", "ledger_check"], env=env, timeout=600, log=log_dir / "ledger_check.log",
                  cwd=root)
    print(f"  ledger_check: exit {checked.returncode}: {(checked.stdout + checked.stderr).strip()[-300:]}")
    if checked.returncode != 0:
        problems.append(f"ledger_check failed: {(checked.stdout + checked.stderr).strip()[-500:]}")
    counted = run([PY, script, "--django-count"], env=env, timeout=120, log=log_dir / "count.log", cwd=root)
    if counted.returncode != 0:
        problems.append(f"counting request records failed:\n{tail(log_dir / 'count.log')}")
        return problems
    outcomes = json.loads(counted.stdout.strip().splitlines()[-1])
    total, succeeded = sum(outcomes.values()), outcomes.get("succeeded", 0)
    ok_200 = answered.get(200, 0)
    server_errors = sum(n for status, n in answered.items() if isinstance(status, int) and status >= 500)
    print(f"  request records: {total} {outcomes}; answers: {dict(answered)}")
    if succeeded != ok_200:
        problems.append(f"{succeeded} succeeded request records but {ok_200} HTTP 200 answers")
    if total - succeeded != server_errors:
        problems.append(f"{total - succeeded} other request records ({outcomes}) but {server_errors} 5xx answers")
    return problems


# --- profile ----------------------------------------------------------------------------------------


def sql_census(server: Child, url: str, api_key: str, workdir: Path, seconds: float) -> tuple[list[Cell], str]:
    """What SQL one request sends: strace the gateway's libpq sends at concurrency 1 and decode them.

    libpq writes PostgreSQL's frontend protocol with send(2) (strace shows sendto); the gateway's own
    HTTP traffic goes through the event loop's write(2)s and is not traced. A simple 'Q' query or an
    extended-protocol 'E' execute is one statement, i.e. one round trip to the server. The gateway runs
    much slower under strace, so this pass measures nothing else.
    """
    strace = shutil.which("strace")
    if strace is None:
        return [], "SQL census skipped: strace is not installed"
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    cells, parts = [], []
    for kind in ("json", "stream"):
        trace = workdir / f"strace-{kind}.txt"
        tracer = subprocess.Popen(
            [strace, "-f", "-qq", "-xx", "-s", "65535", "-e", "trace=sendto", "-o", str(trace),
             "-p", str(server.proc.pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(LOG_DIR / "strace.log", "wb"),
        )
        try:
            time.sleep(1.0)  # strace attaches to every thread
            cell = Cell(f"headroom (SQL census, {kind})", 0, kind, 1)
            asyncio_run(drive(cell, url, headers, request_body("fake0/tiny", kind == "stream"),
                              Timing(warmup_s=0.0, measure_s=seconds, profile_s=0), None))
            cells.append(cell)
            time.sleep(0.3)
        finally:
            tracer.send_signal(signal.SIGINT)
            try:
                tracer.wait(10)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait()
        answered = sum(cell.statuses.values())
        if not trace.exists() or not answered:
            parts.append(f"SQL census ({kind}): no trace ({tail(LOG_DIR / 'strace.log', 5)})")
            continue
        statements, commits = _decode_libpq_sends(trace.read_text(errors="replace"))
        total = sum(statements.values())
        rows = [
            f"{'Streaming' if kind == 'stream' else 'Non-streaming'}: {total / answered:.1f} statements "
            f"(round trips) and {commits / answered:.1f} commits per request, over {answered} requests:",
            "",
            "| per request | statement |",
            "|---:|---|",
        ]
        rows += [f"| {n / answered:.2f} | `{text}` |" for text, n in statements.most_common(30)]
        parts.append("\n".join(rows))
    return cells, "\n\n".join(parts)


WRITE = re.compile(r"^(INSERT|UPDATE|DELETE|WITH .* (INSERT|UPDATE|DELETE) |SELECT nextval)", re.IGNORECASE)


def _decode_libpq_sends(trace: str) -> tuple[Counter, int]:
    """Statements (by shape) and durable commits: COMMITs plus writes sent outside a transaction."""
    statements: Counter = Counter()
    commits = 0
    in_transaction: dict[str, bool] = {}
    for line in trace.splitlines():
        match = re.search(r'^(\d+)\s+sendto\((\d+), "((?:\\x[0-9a-f]{2})*)"', line)
        if not match:
            continue
        connection = f"{match.group(1)}:{match.group(2)}"  # thread and socket
        data = bytes.fromhex(match.group(3).replace("\\x", ""))
        parsed = None
        while len(data) >= 5:
            kind, length = data[:1], int.from_bytes(data[1:5], "big")
            payload, data = data[5:1 + length], data[1 + length:]
            if kind == b"Q":
                text = payload.rstrip(b"\0").decode(errors="replace")
            elif kind == b"P":  # Parse: name\0 query\0 ...
                parsed = payload.split(b"\0")[1].decode(errors="replace")
                continue
            elif kind == b"E":
                text, parsed = parsed or "(a prepared statement)", None
            else:
                continue
            word = text.lstrip().split(" ", 1)[0].upper()
            if word in ("BEGIN", "START"):
                in_transaction[connection] = True
            elif word in ("COMMIT", "ROLLBACK"):
                in_transaction[connection] = False
                commits += word == "COMMIT"
            elif not in_transaction.get(connection) and WRITE.match(text.lstrip()):
                commits += 1  # autocommit: a transaction, and a WAL flush, of its own
            statements[re.sub(r'"s\d+_x\d+"', '"s…"', _statement(text))] += 1
    return statements, commits


def find_py_spy() -> str | None:
    local = ROOT / ".venv" / "bin" / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


PROFILES = (
    ("cpu", ["--gil"], "the thread holding the GIL: the gateway's Python CPU time (C code that releases "
                       "the GIL, such as socket waits and libpq, is not in it)"),
    ("wall", ["--idle"], "every thread, idle or waiting included: where the event loop and the database "
                         "threads spend their wall time"),
)


def profile_headroom(py_spy: str, server: Child, url: str, api_key: str, timing: Timing, workdir: Path,
                     database: str) -> tuple[list[Cell], str]:
    """py-spy samples the gateway while it serves concurrency 16, non-streaming, 0 ms upstream: a CPU pass,
    then a wall-clock pass during which PostgreSQL's pg_stat_activity is sampled too."""
    cells, parts = [], []
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    body = request_body("fake0/tiny", False)
    profile_timing = Timing(warmup_s=timing.warmup_s, measure_s=timing.profile_s, profile_s=0)
    for name, flags, meaning in PROFILES:
        raw = workdir / f"profile-{name}.txt"
        seconds = int(timing.warmup_s + timing.profile_s) + 1
        spy = subprocess.Popen(
            [py_spy, "record", *flags, "--nonblocking", "--format", "raw", "--rate", "100",
             "--duration", str(seconds), "--output", str(raw), "--pid", str(server.proc.pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(LOG_DIR / f"py-spy-{name}.log", "wb"),
        )
        sampler = PgActivitySampler(database) if name == "wall" else None
        try:
            vacuum(database)
            time.sleep(0.5)
            cell = Cell(f"headroom ({name} profile)", 0, "json", 16)
            if sampler:
                sampler.start()
            asyncio_run(drive(cell, url, headers, body, profile_timing, server.proc.pid, database))
            print_cell(cell)
            cells.append(cell)
            spy.wait(seconds + 30)
        finally:
            if sampler:
                sampler.stop()
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(10)
                if spy.poll() is None:
                    spy.kill()
                    spy.wait()
        if not raw.exists():
            parts.append(f"py-spy ({name}) wrote no profile:\n{tail(LOG_DIR / f'py-spy-{name}.log')}")
            continue
        saved = LOG_DIR / f"profile-headroom-c16-{name}.txt"
        shutil.copy(raw, saved)
        parts.append(f"#### {name.upper()} profile ({cell.rps:.0f} req/s while sampled)\n\n"
                     + summarize_profile(raw.read_text(), saved, meaning, wall=name == "wall"))
        if sampler:
            parts.append(sampler.summary())
    return cells, "\n\n".join(parts)


class PgActivitySampler:
    """Samples pg_stat_activity of the bench database every 20 ms from a thread: what the gateway's
    connections are doing (running, waiting on a lock, idle in a transaction) and on which statement."""

    def __init__(self, database: str):
        import threading

        self.database = database
        self.counts: Counter = Counter()
        self.samples = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            import psycopg

            with psycopg.connect(f"postgresql://postgres@{HOST}:5432/{self.database}", autocommit=True) as conn:
                while not self._stop.wait(0.02):
                    rows = conn.execute(
                        "SELECT state, coalesce(wait_event_type || ':' || wait_event, 'on CPU'), query "
                        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND backend_type = 'client backend'"
                    ).fetchall()
                    self.samples += 1
                    for state, wait, query in rows:
                        if state == "idle":
                            self.counts[("idle", "", "")] += 1
                        else:
                            self.counts[(state, wait if state == "active" else "", _statement(query))] += 1
        except Exception as error:  # noqa: BLE001 - a missing sample is reported, never fatal
            self.error = f"{type(error).__name__}: {error}"

    def summary(self) -> str:
        if not self.samples:
            return f"pg_stat_activity: no samples ({self.error or 'none taken'})"
        total = sum(self.counts.values())
        rows = [
            f"pg_stat_activity of the gateway's connections, {self.samples} samples every 20 ms "
            f"(on average {total / self.samples:.1f} connections open):",
            "",
            "| % of connection samples | state | waiting on | statement (last one for idle in transaction) |",
            "|---:|---|---|---|",
        ]
        for (state, wait, query), n in self.counts.most_common(15):
            rows.append(f"| {100 * n / total:5.1f} | {state} | {wait} | `{query}` |")
        return "\n".join(rows)


def _statement(query: str, limit: int = 150) -> str:
    """A statement shortened to what tells it apart: literals, numbers and column lists elided."""
    text = " ".join((query or "").split())
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\b\d+\b", "N", text)
    text = re.sub(r"^SELECT (?!N AS)(.{40,}?) FROM ", "SELECT … FROM ", text)
    text = re.sub(r"^INSERT INTO (\S+) \([^)]*\)", r"INSERT INTO \1 (…)", text)
    lock = re.search(r"FOR (NO KEY )?UPDATE( OF [^ ]+)?( SKIP LOCKED| NOWAIT)?", text)
    if len(text) > limit:
        text = text[:limit] + "…" + (f" {lock.group(0)}" if lock and lock.start() > limit else "")
    return text


FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


PLUMBING = ("threading.py", "concurrent/", "<frozen runpy>", "click/", "uvicorn/main.py", "uvicorn/server.py",
             "asyncio/runners.py", "asyncio/base_events.py", "asyncio/events.py")


def summarize_profile(text: str, saved: Path, meaning: str, *, wall: bool, top: int = 20) -> str:
    """Where py-spy's samples (collapsed stacks) fall: by package, by Headroom function, by statement."""
    total = 0
    by_statement: Counter = Counter()
    by_area: Counter = Counter()
    ours: Counter = Counter()
    deepest_ours: Counter = Counter()
    for row in text.splitlines():
        stack, _, count = row.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = []
        for raw_frame in stack.split(";"):
            match = FRAME.match(raw_frame.strip())
            if match:  # a thread label ("thread (0x...)", "process ...") has no file and is dropped
                frames.append((match["func"], _short(match["file"]), match["line"]))
        if not frames:
            continue
        total += n
        func, file, line = frames[-1]
        by_statement[f"{func} ({file}:{line})"] += n
        by_area[_area(file)] += n
        mine = [(fn, fl, ln) for fn, fl, ln in frames if _area(fl).startswith("headroom:")]
        for name in {f"{fn} ({fl})" for fn, fl, _ in mine}:
            ours[name] += n
        if mine:
            fn, fl, ln = mine[-1]
            deepest_ours[f"{fn} ({fl}:{ln})"] += n
        else:
            deepest_ours["(no Headroom frame: server, event loop or idle thread)"] += n
    if not total:
        return "the profile holds no samples"

    def table(title: str, counts: Counter, limit: int) -> list[str]:
        rows = [title, "", "| % of samples | where |", "|---:|---|"]
        rows += [f"| {100 * n / total:5.1f} | `{name}` |" for name, n in counts.most_common(limit)]
        return rows + [""]

    lines = [f"{total} samples (py-spy record --nonblocking --rate 100) of {meaning}. "
             f"Raw stacks: `{_short(str(saved))}`.", ""]
    if not wall:
        lines += table("Self time by package (the frame on top of the stack):", by_area, 15)
    lines += table("Inclusive, Headroom's own functions:", ours, top)
    lines += table("The deepest Headroom statement on the stack (what the time is spent under):", deepest_ours, top)
    if not wall:
        lines += table("Self time by statement:", by_statement, top)
    return "\n".join(lines).rstrip()


def _area(path: str) -> str:
    first = path.split("/", 1)[0]
    if first in ("pool", "billing", "keys", "accounts", "exchange", "config", "bench"):
        return f"headroom:{first}"
    if any(path.startswith(p) for p in PLUMBING):
        return "event loop / thread plumbing"
    if "/" not in path:
        return path.removesuffix(".py") + " (stdlib)"
    return first


# --- report -----------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}"


def add_overhead(cells: list[Cell]) -> None:
    direct = {c.key: c for c in cells if c.target == "direct"}
    for cell in cells:
        base = direct.get(cell.key)
        if cell.target != "direct" and base is not None and cell.p50 is not None and base.p50 is not None:
            cell.added_p50 = cell.p50 - base.p50
            cell.added_p99 = cell.p99 - base.p99


def results_table(cells: list[Cell]) -> str:
    head = ("| target | upstream delay | load | conc. | requests | errors | req/s | p50 ms | p99 ms | added p50 | "
            "added p99 | TTFT p50 | server CPU % | server CPU ms/req | PG CPU ms/req | load gen CPU % | peak RSS MB |")
    rows = [head, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        rows.append(
            f"| {c.target} | {c.delay_ms} ms | {'stream' if c.kind == 'stream' else 'non-stream'} | {c.concurrency} | "
            f"{c.requests} | {c.errors} | {c.rps:.0f} | {fmt(c.p50)} | {fmt(c.p99)} | {signed(c.added_p50)} | "
            f"{signed(c.added_p99)} | {fmt(c.ttft_p50)} | {fmt(c.server_cpu_pct, 0)} | {fmt(c.server_cpu_ms, 2)} | "
            f"{fmt(c.postgres_cpu_ms, 2)} | {fmt(c.gen_cpu_pct, 0)} | {fmt(c.peak_rss_mb, 0)} |"
        )
    return "\n".join(rows)


def targets_table(cells: list[Cell]) -> str:
    def find(target: str, kind: str, concurrency: int) -> Cell | None:
        return next((c for c in cells if c.target == target and c.delay_ms == 0 and c.kind == kind
                     and c.concurrency == concurrency), None)

    def verdict(ok: bool | None) -> str:
        return "–" if ok is None else ("met" if ok else "**missed**")

    rows = ["| target (0 ms upstream) | goal | Headroom | verdict | LiteLLM | floor |", "|---|---|---:|---|---:|---:|"]
    checks = [
        ("added p50 at concurrency 1", f"≤ {TARGET_ADDED_P50_MS:g} ms", ("json", 1), "added_p50",
         lambda v: v <= TARGET_ADDED_P50_MS, lambda v: f"{v:+.1f} ms"),
        ("non-streaming req/s at concurrency 16", f"≥ {TARGET_RPS_JSON}", ("json", 16), "rps",
         lambda v: v >= TARGET_RPS_JSON, lambda v: f"{v:.0f}"),
        ("streaming req/s at concurrency 16", f"≥ {TARGET_RPS_STREAM}", ("stream", 16), "rps",
         lambda v: v >= TARGET_RPS_STREAM, lambda v: f"{v:.0f}"),
    ]
    for label, goal, (kind, conc), attr, ok, show in checks:
        ours = find("headroom", kind, conc)
        value = getattr(ours, attr) if ours else None
        others = []
        for target in ("litellm", "floor"):
            other = find(target, kind, conc)
            other_value = getattr(other, attr) if other else None
            others.append(show(other_value) if other_value is not None else "–")
        rows.append(f"| {label} | {goal} | {show(value) if value is not None else '–'} | "
                    f"{verdict(ok(value) if value is not None else None)} | {' | '.join(others)} |")
    rss = max((c.peak_rss_mb for c in cells if c.target == "headroom" and c.peak_rss_mb), default=None)
    peer_rss = max((c.peak_rss_mb for c in cells if c.target == "litellm" and c.peak_rss_mb), default=None)
    floor_rss = max((c.peak_rss_mb for c in cells if c.target == "floor" and c.peak_rss_mb), default=None)
    rows.append(f"| peak RSS of the worker | ≤ {TARGET_RSS_MB} MB | {fmt(rss, 0)} MB | "
                f"{verdict(rss <= TARGET_RSS_MB if rss else None)} | {fmt(peer_rss, 0)} MB | {fmt(floor_rss, 0)} MB |")
    return "\n".join(rows)


def compare(cells: list[Cell]) -> str:
    """One sentence: Headroom against LiteLLM on the 0 ms fake, from this run's cells."""
    def cell(target: str, kind: str, concurrency: int) -> Cell | None:
        return next((c for c in cells if (c.target, c.delay_ms, c.kind, c.concurrency) == (target, 0, kind, concurrency)),
                    None)

    pairs = [(cell("headroom", k, c), cell("litellm", k, c)) for k, c in (("json", 1), ("json", 16), ("stream", 16))]
    if not all(h and p and h.added_p50 is not None and p.added_p50 is not None and p.rps > 0 for h, p in pairs):
        return ""
    (h1, p1), (h16, p16), (hs, ps) = pairs
    hr = max((c.peak_rss_mb or 0) for c in cells if c.target == "headroom")
    pr = max((c.peak_rss_mb or 0) for c in cells if c.target == "litellm")
    return (f"Against LiteLLM on the same machine (0 ms upstream): Headroom adds {h1.added_p50:+.1f} ms at p50 "
            f"at concurrency 1 (LiteLLM {p1.added_p50:+.1f} ms), serves {h16.rps / p16.rps:.2f}× LiteLLM's "
            f"non-streaming req/s at concurrency 16 ({h16.rps:.0f} vs {p16.rps:.0f}) and {hs.rps / ps.rps:.2f}× "
            f"its streaming req/s ({hs.rps:.0f} vs {ps.rps:.0f}), in {hr:.0f} MB against {pr:.0f} MB — and, "
            f"unlike LiteLLM here, settles every request in PostgreSQL before answering.")


def floor_sentence(cells: list[Cell]) -> str:
    """What the machine charges for the hot path's shape alone (bench/floor.py), and Headroom's work on top."""
    def cell(target: str, concurrency: int) -> Cell | None:
        return next((c for c in cells if (c.target, c.delay_ms, c.kind, c.concurrency) == (target, 0, "json", concurrency)),
                    None)

    floor1, ours1, floor16 = cell("floor", 1), cell("headroom", 1), cell("floor", 16)
    if not (floor1 and ours1 and floor16 and floor1.added_p50 is not None and ours1.added_p50 is not None):
        return ""
    return (f"The floor (the same shape doing nothing else: two PostgreSQL round trips, one of them flushed to disk, "
            f"and the upstream call) adds {floor1.added_p50:+.1f} ms at concurrency 1 on this machine and serves "
            f"{floor16.rps:.0f} req/s at 16; Headroom's own work is the {ours1.added_p50 - floor1.added_p50:+.1f} ms "
            "on top of it.")


def machine() -> str:
    model = "unknown CPU"
    for line in (_read(Path("/proc/cpuinfo")) or "").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} CPUs (nproc), {model}, Linux {platform.release()}, Python {platform.python_version()}"


def report(cells: list[Cell], notes: list[str], command: str, pinned: bool, versions: dict) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    pin = ("gateway under test pinned to core 0; fake providers, load generator and py-spy on core 1; "
           "PostgreSQL and Redis are the machine's services, not pinned") if pinned else "no CPU pinning (taskset missing or one core)"
    parts = [
        f"Run {now} on {machine()}.",
        "",
        f"Command: `{command}`",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in versions.items())}. {pin[0].upper() + pin[1:]}.",
        "",
        results_table(cells),
        "",
        targets_table(cells),
    ]
    for sentence in (compare(cells), floor_sentence(cells)):
        if sentence:
            parts += ["", sentence]
    if notes:
        parts += ["", "Notes from this run:", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts)


def write_readme(text: str) -> None:
    current = _read(README) or ""
    block = f"{RESULTS_START}\n{text}\n{RESULTS_END}"
    if RESULTS_START in current and RESULTS_END in current:
        before, rest = current.split(RESULTS_START, 1)
        after = rest.split(RESULTS_END, 1)[1]
        README.write_text(before + block + after)
    else:
        README.write_text(current.rstrip() + "\n\n## Latest results\n\n" + block + "\n")


def error_report(cells: list[Cell], logs: dict[str, Path]) -> list[str]:
    notes = []
    for cell in cells:
        bad = {k: v for k, v in cell.error_kinds.items()}
        if bad:
            bodies = "; ".join(cell.error_bodies) or "no bodies"
            notes.append(f"{cell.target} {cell.delay_ms} ms {cell.kind} c={cell.concurrency}: "
                         f"{cell.errors} errors in the measured window, {cell.errors_outside} in warm-up or tail: "
                         f"{dict(bad)}; statuses {dict(cell.statuses)}; {bodies}")
    printed = set()
    for cell in cells:
        if cell.error_kinds and cell.target in logs and cell.target not in printed:
            printed.add(cell.target)
            print(f"\n{cell.target} log tail ({logs[cell.target]}):\n{tail(logs[cell.target], 40)}")
    return notes


# --- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark direct vs LiteLLM vs Headroom on loopback.")
    parser.add_argument("--quick", action="store_true", help="short cells (a smoke run); does not touch README")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md also with --quick")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM (no install, no run)")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip Headroom's diagnostics (SQL census with strace, py-spy profiles)")
    parser.add_argument("--max-minutes", type=float, default=30.0,
                        help="stop everything after this long (default 30, a first LiteLLM install included)")
    parser.add_argument("--django-setup", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--django-count", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.django_setup:
        django_setup(json.loads(args.django_setup))
        return 0
    if args.django_count:
        django_count()
        return 0

    if not PY.exists():
        print(f"{PY} is missing: create the project's virtualenv first (make install)")
        return 2
    if Path(sys.executable).resolve() != PY.resolve() and os.environ.get("VIRTUAL_ENV") != str(ROOT / ".venv"):
        print(f"note: running under {sys.executable}; the load generator needs aiohttp (run it with {PY})")
    timing = QUICK if args.quick else FULL
    command = " ".join([".venv/bin/python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    clean_logs(LOG_DIR)
    pinned = pin_load_generator()
    children = Children(pinned)
    database = f"headroom_bench_{os.getpid()}"

    cells: list[Cell] = []
    extra_cells: list[Cell] = []  # the profiled runs: checked for errors, not in the table
    notes: list[str] = []
    logs: dict[str, Path] = {}
    versions = {"headroom": _git_version()}
    profile_text = None
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="headroom-bench-"))
    with guarded(children, args.max_minutes, "benchmark") as guard:
        guard.at_exit(lambda: shutil.rmtree(workdir, ignore_errors=True))
        preflight()
        drop_stale_databases()
        notes.append(f"load average when the run started: {(_read(Path('/proc/loadavg')) or '?').split(' ')[0]} "
                     "(other work on the machine shares its cores and PostgreSQL)")
        exe, litellm_note = (None, "skipped (--no-litellm)") if args.no_litellm else litellm_install()
        if exe is None:
            print(f"LiteLLM will not be benchmarked: {litellm_note}")
            notes.append(f"LiteLLM not benchmarked: {litellm_note.splitlines()[0]}")
        else:
            versions["litellm"] = litellm_note

        print("starting the fake providers (0 ms and 50 ms, 20-chunk streams) ...", flush=True)
        fakes = start_fakes(children)
        logs["direct"] = fakes[0][1].log

        print(f"creating database {database} and setting Headroom up ...", flush=True)
        create_database(database)
        guard.at_exit(lambda: drop_database(database))
        env = headroom_env(database)
        api_key = headroom_prepare(env, fakes)

        print("benchmarking the fake provider directly ...", flush=True)
        cells += bench_target("direct", FAKE_SECRET, {
            d: (f"{url}/v1/chat/completions", MODEL_DIRECT, child.proc.pid) for d, (url, child) in fakes.items()
        }, timing)

        if exe is not None:
            print("starting LiteLLM's proxy (pinned like the gateway) ...", flush=True)
            try:
                proxy, url, master_key = start_litellm(children, exe, fakes, workdir)
            except RuntimeError as error:
                print(f"LiteLLM did not start: {error}")
                notes.append(f"LiteLLM did not start: {str(error).splitlines()[0]}")
            else:
                logs["litellm"] = proxy.log
                cells += bench_target("litellm", master_key, {
                    d: (f"{url}/v1/chat/completions", f"tiny-{d}ms", proxy.proc.pid) for d in DELAYS_MS
                }, timing)
                children.stop(proxy)

        print("starting the floor (bench/floor.py: the shape of Headroom's hot path, doing nothing else) ...",
              flush=True)
        floor, url = start_floor(children, database, fakes)
        logs["floor"] = floor.log
        cells += bench_target("floor", "-", {0: (f"{url}/v1/chat/completions", MODEL_DIRECT, floor.proc.pid)},
                              timing, database, loads=FLOOR_LOADS)
        children.stop(floor)

        print("starting Headroom (uvicorn config.asgi:application, one worker) ...", flush=True)
        server, url = start_headroom(children, env, api_key)
        logs["headroom"] = server.log
        found = bench_target("headroom", api_key, {
            d: (f"{url}/v1/chat/completions", f"fake{d}/tiny", server.proc.pid) for d in DELAYS_MS
        }, timing, database)
        answered = sum((c.statuses for c in found), Counter())
        cells += found

        py_spy = None if args.no_profile else find_py_spy()
        if py_spy:
            print("profiling Headroom with py-spy at concurrency 16 (non-streaming, 0 ms) ...", flush=True)
            profiled, profile_text = profile_headroom(py_spy, server, f"{url}/v1/chat/completions", api_key,
                                                      timing, workdir, database)
            answered = sum((c.statuses for c in profiled), answered)
            extra_cells += profiled
        elif not args.no_profile:
            notes.append("no py-spy profile: py-spy is not installed (.venv/bin/pip install py-spy)")
        if not args.no_profile:
            print("counting Headroom's SQL per request (strace at concurrency 1) ...", flush=True)
            census_cells, census_text = sql_census(server, f"{url}/v1/chat/completions", api_key, workdir,
                                                   timing.measure_s / 2)
            answered = sum((c.statuses for c in census_cells), answered)
            extra_cells += census_cells
            profile_text = "\n\n".join(t for t in (census_text, profile_text) if t)
        children.stop(server)

        print("checking Headroom's books ...", flush=True)
        problems = headroom_verify(env, answered)
        if problems:
            guard.status = 1
            notes += [f"Headroom verification FAILED: {p}" for p in problems]
        else:
            notes.append(f"Headroom verification passed: `manage.py ledger_check` clean; one succeeded request "
                         f"record per HTTP 200 ({answered.get(200, 0)}, warm-up and profiling included) and one "
                         "failed record per 5xx answer.")
        notes += error_report(cells + extra_cells, logs)
        if any(c.error_kinds for c in cells + extra_cells):
            guard.status = 1
    status = guard.status

    if cells:
        add_overhead(cells)
        (LOG_DIR / "results.json").write_text(json.dumps(
            [{**vars(c), "statuses": {str(k): v for k, v in c.statuses.items()}, "error_kinds": dict(c.error_kinds)}
             for c in cells + extra_cells], indent=1))
        text = report(cells, notes, command, pinned, versions)
        print("\n" + text)
        if profile_text:
            print("\nHeadroom's SQL per request and its profile at concurrency 16:\n\n" + profile_text)
        if status in (0, 1) and (not args.quick or args.readme):
            if profile_text:
                text += "\n\n### Headroom's SQL per request and its profile at concurrency 16\n\n" + profile_text
            write_readme(text)
            print(f"\nwritten to {README.relative_to(ROOT)}")
    print(f"done in {time.monotonic() - started:.0f} s; logs in {LOG_DIR.relative_to(ROOT)}/")
    return status


def clean_logs(folder: Path) -> None:
    """An empty log folder for this run (the last run's files go)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*"):
        if old.is_file():
            old.unlink()


def pin_load_generator() -> bool:
    """Core 1 for this process (the load generator) and every child not started with `taskset -c 0`;
    False (nothing pinned) without taskset or with one core."""
    pinned = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    if pinned:
        os.sched_setaffinity(0, {1})
    return pinned


@dataclass
class Guard:
    status: int = 0  # 1: failed, 130: interrupted
    cleanups: list = field(default_factory=list)

    def at_exit(self, step) -> None:
        """`step()` runs at the end whatever happens, after every child is stopped (latest first)."""
        self.cleanups.append(step)


@contextlib.contextmanager
def guarded(children: Children, max_minutes: float, what: str):
    """The body of a run: Ctrl-C, SIGTERM, SIGHUP and overtime (max_minutes) end it, as does an error
    (reported, guard.status 130 or 1), and at the end, whatever happened, every child is stopped and
    the guard's cleanups run, with the alarm off and a second Ctrl-C unable to cut them short."""
    overtime = stop_on_signals(max_minutes)
    guard = Guard()
    try:
        yield guard
    except KeyboardInterrupt as stop:
        reason = "overtime: --max-minutes reached" if overtime["hit"] else str(stop) or "interrupted"
        print(f"\nstopping ({reason}) ...")
        guard.status = 130
    except Exception as error:  # noqa: BLE001 - report, then clean up
        print(f"\n{what} failed: {error}")
        guard.status = 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            children.stop_all()
            for step in reversed(guard.cleanups):
                step()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def stop_on_signals(max_minutes: float) -> dict:
    """Ctrl-C, SIGTERM, SIGHUP and --max-minutes all raise KeyboardInterrupt in the main thread, so one
    `finally` stops everything; the returned dict's "hit" says whether it was the overtime."""
    overtime = {"hit": False}

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def on_alarm(_signum, _frame):
        overtime["hit"] = True
        raise KeyboardInterrupt("overtime")

    # Explicitly: a shell starting the script in the background may have left SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(max_minutes * 60))
    return overtime


def create_database(name: str) -> None:
    created = run(["createdb", *PG, name], timeout=60)
    if created.returncode != 0:
        raise RuntimeError(f"createdb {name} failed: {created.stderr.strip()}")


def drop_database(name: str) -> None:
    dropped = run(["dropdb", *PG, "--if-exists", "--force", name], timeout=120)
    if dropped.returncode != 0:
        print(f"dropdb {name} failed: {dropped.stderr.strip()}")


def preflight() -> None:
    if run(["pg_isready", *PG], timeout=10).returncode != 0:
        raise RuntimeError("PostgreSQL does not answer on 127.0.0.1:5432")
    with socket.create_connection((HOST, 6379), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        if not sock.recv(16).startswith(b"+PONG"):
            raise RuntimeError("Redis does not answer on 127.0.0.1:6379")


def drop_stale_databases() -> None:
    """Databases of earlier runs that were killed too hard to clean up (their process is gone)."""
    listed = run(["psql", *PG, "-Atc", "SELECT datname FROM pg_database WHERE datname LIKE 'headroom_bench_%'"],
                 timeout=30)
    for name in listed.stdout.split():
        pid = name.removeprefix("headroom_bench_").split("_")[0]  # bench/ab.py's are headroom_bench_<pid>_<side>
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            print(f"dropping {name}, left by an earlier run that did not finish")
            drop_database(name)


def _git_version() -> str:
    result = run(["git", "describe", "--always", "--dirty"], timeout=10)
    return result.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
