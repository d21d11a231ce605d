"""A/B benchmark of two git refs of Headroom's /v1 hot path, served side by side in alternating cells.

    .venv/bin/python bench/ab.py A_REF B_REF [--cells N] [--seconds S] [--max-minutes M]

The machine's speed drifts from minute to minute, so two versions are only compared under the same
drift: both are served at once, from two databases set up alike, and measured in alternating short
cells (A B, then B A, ... so that neither always goes first), each database vacuumed before its cell. Per load it prints A's and B's range
and median over their cells, the ratio of the medians and the verdict against the rule "B's req/s at
concurrency 16 within 5 % of A's and B's added p50 at concurrency 1 within 0.3 ms of A's, or better".

Each ref is exported (`git archive`) into a temporary folder, and this checkout's .venv runs both: the
refs must share dependencies. Each side is driven only through its public surface, never imported
here: its own `manage.py migrate` and its own `bench/run.py --django-setup` (this checkout's when the
ref has none) seed its database exactly as bench/run.py seeds Headroom's, then uvicorn serves it
through bench/abserve.py, whose log line says that every project module it loaded came from that
ref's folder (the side is refused otherwise); its own `manage.py ledger_check` checks its books at the
end. Everything else is bench/run.py's: the fake provider, the pinning, the load generator, the
VACUUM, the process groups and the stop on Ctrl-C, SIGTERM and overtime. Databases
(headroom_bench_<pid>_a/_b) and temporary folders are removed at the end; logs stay in bench/.logs/ab/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # run by path: import this checkout's bench package

from bench.run import (  # noqa: E402
    BENCH, FAKE_SECRET, LOG_DIR, MODEL_DIRECT, PY, ROOT, Cell, Child, Children, Timing, _read, asyncio_run, clean_logs,
    create_database, drive, drop_database, drop_stale_databases, error_report, guarded, headroom_env,
    headroom_prepare, headroom_verify, machine, pin_load_generator, preflight, print_cell, request_body, run,
    start_fakes, start_headroom, vacuum,
)

AB_LOGS = LOG_DIR / "ab"
REDIS_URL = "redis://127.0.0.1:6379/12"  # not run.py's 13: both may run at once
LOADS = (("json", 1), ("json", 16), ("stream", 16))  # (kind, concurrency), all on the 0 ms fake
MODEL = "fake0/tiny"
TEMP_PREFIX = "headroom-ab-"

# The rule a change must meet (bench/README.md, "A/B runs").
MAX_RPS_LOSS = 0.05
MAX_ADDED_P50_GAIN_MS = 0.3


@dataclass
class Side:
    label: str  # A | B
    ref: str
    commit: str
    subject: str
    checkout: Path
    database: str
    log_dir: Path
    script: Path = BENCH / "run.py"  # whose --django-setup seeds it (the ref's own when it has one)
    env: dict = field(default_factory=dict)
    api_key: str = ""
    server: Child | None = None
    url: str = ""
    answered: Counter = field(default_factory=Counter)  # every answer, priming included, for the books
    notes: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.label} {self.commit[:7]}"


# --- the two checkouts ----------------------------------------------------------------------------------


def resolve(ref: str) -> tuple[str, str]:
    found = run(["git", "log", "-1", "--format=%H %s", f"{ref}^{{commit}}", "--"], timeout=30)
    if found.returncode != 0 or not found.stdout.strip():
        raise SystemExit(f"not a commit here: {ref} ({found.stderr.strip()})")
    commit, _, subject = found.stdout.strip().partition(" ")
    return commit, subject


def export(side: Side) -> None:
    """The ref's tree exactly (`git archive`, so no worktree is registered in the repository), plus
    this checkout's bench/settings.py if the ref predates it (noted)."""
    side.checkout.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", "--format=tar", side.commit],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    untar = subprocess.run(["tar", "-x", "-C", str(side.checkout)], stdin=archive.stdout, capture_output=True)
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise RuntimeError(f"git archive {side.commit} failed: {untar.stderr.decode(errors='replace')}")
    for name in ("__init__.py", "settings.py"):
        if not (side.checkout / "bench" / name).exists():
            (side.checkout / "bench").mkdir(exist_ok=True)
            shutil.copy(BENCH / name, side.checkout / "bench" / name)
            side.notes.append(f"{side.name} has no bench/{name}: this checkout's was added to it")
    own = side.checkout / "bench" / "run.py"
    if own.exists() and "--django-setup" in (_read(own) or ""):
        side.script = own
    else:
        side.notes.append(f"{side.name} has no bench/run.py --django-setup: seeded by this checkout's")


def sweep_stale_checkouts() -> None:
    """Temporary folders of earlier runs killed too hard to clean up (their process is gone)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*-*"):
        pid = folder.name.removeprefix(TEMP_PREFIX).split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


# --- each side's database and server --------------------------------------------------------------------


def prepare(side: Side, fakes: dict) -> None:
    side.log_dir.mkdir(parents=True, exist_ok=True)
    # Everything as bench/run.py sets Headroom up, but this ref's code first on the path and Redis db 12.
    side.env = {**headroom_env(side.database), "PYTHONPATH": str(side.checkout), "REDIS_URL": REDIS_URL}
    side.api_key = headroom_prepare(side.env, fakes, root=side.checkout, script=side.script, log_dir=side.log_dir)


def serve(side: Side, children: Children) -> None:
    launcher = [str(PY), str(BENCH / "abserve.py"), str(side.checkout)]
    side.server, side.url = start_headroom(children, side.env, side.api_key, name=f"headroom-{side.label}",
                                           launcher=launcher, cwd=side.checkout)
    problem = census_problem(side, "loaded")
    if problem:
        raise RuntimeError(problem)


def census_problem(side: Side, when: str) -> str | None:
    """None when bench/abserve.py's census line says every project module came from the side's checkout."""
    lines = [line for line in (_read(side.server.log) or "").splitlines() if line.startswith(f"abserve {when}:")]
    if not lines:
        return f"{side.name}: no `abserve {when}` line in {side.server.log}"
    if f"outside {side.checkout.resolve()}: none;" not in lines[-1]:
        return f"{side.name} did not run its own code: {lines[-1]}"
    return None


def check(side: Side) -> list[str]:
    """After its server stopped: the census of everything it imported, then its books (bench/run.py's
    check, with the ref's own ledger_check and request records)."""
    problem = census_problem(side, "stopped")
    notes = [f"FAILED: {problem}"] if problem else [
        f"{side.name}: every project module it loaded came from its own checkout"]
    print(f"checking {side.name}'s books ...", flush=True)
    problems = headroom_verify(side.env, side.answered, root=side.checkout, script=side.script, log_dir=side.log_dir)
    return notes + ([f"{side.name} verification FAILED: {p}" for p in problems] or [
        f"{side.name}: ledger_check clean, one request record per answer ({side.answered.get(200, 0)} HTTP 200, "
        "priming included)"])


# --- the cells ------------------------------------------------------------------------------------------


@dataclass
class RoundCell(Cell):
    round: int = 0  # 0: the unrecorded priming cell


def alternate(sides: list[Side], fake: tuple[str, Child], rounds: int, timing: Timing) -> list[RoundCell]:
    """Each round: the fake directly at concurrency 1 (the base of `added`), then each load on both
    sides, one cell each, each database vacuumed before its own cell. The pair's order flips every
    round (A B, then B A, ...), so that neither side always runs first after the other's cell or the
    direct one, and a drift during the run weighs on both alike. Before the first round, a short
    unrecorded cell per side at 16 loads the lazy imports, opens the connections and makes the
    platform accounts the first settlement needs."""
    prime = Timing(warmup_s=0.0, measure_s=2.0, profile_s=0.0)
    for side in sides:
        run_cell(side, "json", 16, prime, 0)
    cells = []
    fake_url, fake_child = fake
    for number in range(1, rounds + 1):
        order = sides if number % 2 else sides[::-1]
        print(f"round {number}/{rounds}: {' then '.join(s.label for s in order)}", flush=True)
        for kind, concurrency in LOADS:
            if (kind, concurrency) == ("json", 1):
                direct = RoundCell("direct", 0, kind, concurrency, round=number)
                asyncio_run(drive(direct, f"{fake_url}/v1/chat/completions", _headers(FAKE_SECRET),
                                  request_body(MODEL_DIRECT, False), timing, fake_child.proc.pid))
                print_cell(direct)
                cells.append(direct)
            for side in order:
                cell = run_cell(side, kind, concurrency, timing, number)
                if (kind, concurrency) == ("json", 1) and cell.p50 is not None and direct.p50 is not None:
                    cell.added_p50 = cell.p50 - direct.p50
                cells.append(cell)
    return cells


def run_cell(side: Side, kind: str, concurrency: int, timing: Timing, number: int) -> RoundCell:
    cell = RoundCell(side.label, 0, kind, concurrency, round=number)
    vacuum(side.database)
    asyncio_run(drive(cell, f"{side.url}/v1/chat/completions", _headers(side.api_key),
                      request_body(MODEL, kind == "stream"), timing, side.server.proc.pid, side.database))
    if number:
        print_cell(cell)
    side.answered += cell.statuses
    return cell


def _headers(key: str) -> dict:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


# --- the table ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    title: str
    kind: str
    concurrency: int
    metric: str  # a Cell attribute
    digits: int
    rule: str | None = None  # "rps" | "added" | None (shown, not judged)


ROWS = (
    Row("concurrency 1, added p50 (ms)", "json", 1, "added_p50", 2, "added"),
    Row("concurrency 1, gateway CPU per request (ms)", "json", 1, "server_cpu_ms", 2),
    Row("concurrency 1, PostgreSQL CPU per request (ms)", "json", 1, "postgres_cpu_ms", 2),
    Row("concurrency 16, req/s", "json", 16, "rps", 0, "rps"),
    Row("concurrency 16, gateway CPU per request (ms)", "json", 16, "server_cpu_ms", 2),
    Row("streaming at 16, req/s", "stream", 16, "rps", 0, "rps"),
)


def by_round(cells: list[RoundCell], label: str, row: Row) -> dict[int, float]:
    return {c.round: getattr(c, row.metric) for c in cells
            if (c.target, c.kind, c.concurrency) == (label, row.kind, row.concurrency)
            and getattr(c, row.metric) is not None}


def judge(row: Row, a: float, b: float) -> tuple[str, bool]:
    if row.rule == "rps":
        ok = b >= (1 - MAX_RPS_LOSS) * a
        return f"{'within' if ok else '**outside**'} 5 % ({100 * (b / a - 1):+.1f} %)", ok
    ok = b <= a + MAX_ADDED_P50_GAIN_MS
    return f"{'within' if ok else '**outside**'} 0.3 ms ({b - a:+.2f} ms)", ok


def table(cells: list[RoundCell], sides: list[Side]) -> tuple[str, list[str]]:
    """The Markdown table and the rows that fail the rule.

    The verdict compares the medians. Beside their ratio stands the median of the ratios of the two
    cells of each round, which the drift between rounds cancels out of (shown, not judged)."""
    a, b = sides
    lines = [f"| load (0 ms upstream) | {a.name}: range | median | {b.name}: range | median | B/A | "
             "B/A per round (median) | verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    failed = []
    for row in ROWS:
        ra, rb = by_round(cells, a.label, row), by_round(cells, b.label, row)
        va, vb = list(ra.values()), list(rb.values())
        if not va or not vb:
            lines.append(f"| {row.title} | – | – | – | – | – | – | no data |")
            failed += [row.title] if row.rule else []
            continue
        ma, mb = statistics.median(va), statistics.median(vb)
        verdict, ok = judge(row, ma, mb) if row.rule else ("–", True)
        if not ok:
            failed.append(row.title)
        paired = [rb[n] / ra[n] for n in ra.keys() & rb.keys() if ra[n]]
        d = row.digits
        lines.append(f"| {row.title} | {min(va):.{d}f}–{max(va):.{d}f} | {ma:.{d}f} | "
                     f"{min(vb):.{d}f}–{max(vb):.{d}f} | {mb:.{d}f} | {mb / ma if ma else math.nan:.3f} | "
                     f"{statistics.median(paired) if paired else math.nan:.3f} | {verdict} |")
    return "\n".join(lines), failed


def report(cells: list[RoundCell], sides: list[Side], args, pinned: bool, load: str, notes: list[str]) -> tuple[str, int]:
    text, failed = table(cells, sides)
    errors = sum(c.errors + c.errors_outside for c in cells)
    a, b = sides
    if errors or any("FAILED" in n for n in notes):
        verdict, status = "no verdict: the run had errors or a side's books did not check out (notes below)", 1
    elif failed:
        verdict, status = f"B is **outside** the rule on: {', '.join(failed)}.", 3
    else:
        verdict, status = ("B meets the rule (req/s at concurrency 16 within 5 % of A's, added p50 at "
                           "concurrency 1 within 0.3 ms of A's, or better)."), 0
    per_side = len(by_round(cells, a.label, ROWS[0]))
    direct = sorted(c.p50 for c in cells if c.target == "direct" and c.p50 is not None)
    parts = [
        f"A/B run {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} on {machine()}; load average {load} at the start.",
        "",
        f"Command: `.venv/bin/python bench/ab.py {' '.join(sys.argv[1:])}`",
        "",
        f"A = {a.ref} ({a.commit[:7]} {a.subject}); B = {b.ref} ({b.commit[:7]} {b.subject}). "
        f"{per_side} cells per side and load, alternating (A B, then B A, ...), each {args.seconds:g} s measured "
        f"after {args.warmup:g} s of warm-up; {'gateways on core 0, the rest on core 1' if pinned else 'nothing pinned'}. "
        f"The fake provider called directly at concurrency 1 (the base of `added`): p50 "
        f"{direct[0]:.2f}–{direct[-1]:.2f} ms.",
        "",
        text,
        "",
        f"Verdict: {verdict}",
    ]
    if notes:
        parts += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts), status


# --- main -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A/B benchmark of two git refs of Headroom, cells alternating.")
    parser.add_argument("a_ref", metavar="A_REF", help="the reference (e.g. the previous commit)")
    parser.add_argument("b_ref", metavar="B_REF", help="the candidate")
    parser.add_argument("--cells", type=int, default=10, help="cells per side and load (default 10)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell (default 1)")
    parser.add_argument("--max-minutes", type=float, default=20.0, help="stop everything after this long (default 20)")
    args = parser.parse_args(argv)
    if args.cells < 1 or args.seconds <= 0:
        parser.error("--cells must be at least 1 and --seconds positive")
    if not PY.exists():
        print(f"{PY} is missing: create the project's virtualenv first (make install)")
        return 2
    started = time.monotonic()
    refs = [(label, ref, *resolve(ref)) for label, ref in (("A", args.a_ref), ("B", args.b_ref))]
    clean_logs(AB_LOGS)
    pinned = pin_load_generator()
    children = Children(pinned, log_dir=AB_LOGS)
    workdir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
    sides = [Side(label, ref, commit, subject, workdir / label, f"headroom_bench_{os.getpid()}_{label.lower()}",
                  AB_LOGS / label) for label, ref, commit, subject in refs]
    timing = Timing(warmup_s=args.warmup, measure_s=args.seconds, profile_s=0.0)
    load = (_read(Path("/proc/loadavg")) or "?").split(" ")[0]
    cells: list[RoundCell] = []
    notes: list[str] = []
    with guarded(children, args.max_minutes, "A/B run") as guard:
        guard.at_exit(lambda: shutil.rmtree(workdir, ignore_errors=True))
        preflight()
        drop_stale_databases()
        sweep_stale_checkouts()
        print("starting the fake provider (0 ms, 20-chunk streams) ...", flush=True)
        fake = start_fakes(children, delays=(0,))
        for side in sides:
            print(f"{side.name}: exporting, migrating and seeding {side.database} ...", flush=True)
            export(side)
            create_database(side.database)
            guard.at_exit(lambda database=side.database: drop_database(database))
            prepare(side, fake)
        for side in sides:
            serve(side, children)
            print(f"{side.name}: serving on {side.url} from {side.checkout} (its own code, per its log)", flush=True)
        cells = alternate(sides, fake[0], args.cells, timing)
        for side in sides:
            children.stop(side.server)
            notes += check(side)
        notes += [n for side in sides for n in side.notes]
        notes += error_report(cells, {s.label: s.server.log for s in sides} | {"direct": fake[0][1].log})
    status = guard.status
    if cells and status == 0:
        (AB_LOGS / "results.json").write_text(json.dumps(
            [{**vars(c), "statuses": {str(k): v for k, v in c.statuses.items()},
              "error_kinds": dict(c.error_kinds)} for c in cells], indent=1))
        text, status = report(cells, sides, args, pinned, load, notes)
        (AB_LOGS / "table.md").write_text(text + "\n")
        print("\n" + text)
    print(f"done in {time.monotonic() - started:.0f} s; logs in {AB_LOGS.relative_to(ROOT)}/")
    return status


if __name__ == "__main__":
    sys.exit(main())
