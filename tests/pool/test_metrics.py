"""Operations: Prometheus metrics of the gateway and the database, and one structured log line per
request (request id, endpoint, route, provider, status, duration; no key, secret, prompt or address)."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from django.conf import settings
from django.test import Client
from django.utils.module_loading import import_string

from tests.pool.conftest import MODEL, PROMPT, PROVIDER
from tests.topology.processes import database_url_for_subprocesses, free_port


def _sample(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_by_route_provider_and_status_and_read_the_database(world):
    world.key()
    member = world.member()
    labels = {"endpoint": "/v1/chat/completions", "route": "platform", "provider": PROVIDER, "status": "200"}
    before = _sample(Client().get("/metrics").content.decode(), "headroom_gateway_requests_total", **labels)
    for _ in range(3):
        member.client(world.url).chat.completions.create(model=f"{PROVIDER}/{MODEL}", messages=PROMPT)
    httpx.post(f"{world.url}/v1/chat/completions", json={"model": f"{PROVIDER}/{MODEL}", "messages": PROMPT},
               headers={"Authorization": "Bearer hr-" + "x" * 43})

    page = Client().get("/metrics")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/plain")
    text = page.content.decode()
    assert _sample(text, "headroom_gateway_requests_total", **labels) == before + 3
    assert _sample(text, "headroom_gateway_requests_total", route="none", status="401") >= 1
    assert _sample(text, "headroom_gateway_request_seconds_count", endpoint="/v1/chat/completions",
                   route="platform") >= 3
    assert _sample(text, "headroom_provider_keys", provider=PROVIDER, state="active") == 1
    for gauge in ("headroom_holds_open", "headroom_leases_open", "headroom_settlement_lag_seconds",
                  "headroom_conversions"):
        assert re.search(rf"^{gauge} 0\.0$", text, re.M), gauge


def test_each_gateway_request_writes_one_structured_line_and_nothing_secret(world, caplog):
    caplog.set_level(logging.INFO, logger="headroom.gateway")
    world.key()
    member = world.member()
    raw = member.client(world.url).chat.completions.with_raw_response.create(
        model=f"{PROVIDER}/{MODEL}", messages=[{"role": "user", "content": "a private prompt"}]
    )
    request_id = raw.headers["x-headroom-request-id"]
    lines = [r for r in caplog.records if r.name == "headroom.gateway" and getattr(r, "request_id", "") == request_id]
    assert len(lines) == 1
    record = lines[0]
    assert (record.endpoint, record.route, record.provider, record.status) == (
        "/v1/chat/completions", "platform", PROVIDER, 200)
    assert record.duration_ms > 0
    # as production writes it: one JSON object with those fields
    spec = dict(settings.LOGGING["formatters"]["json"])
    formatter = import_string(spec.pop("()"))(**spec)
    line = json.loads(formatter.format(record))
    assert line["request_id"] == request_id and line["logger"] == "headroom.gateway" and line["status"] == 200
    text = formatter.format(record)
    assert member.api_key not in text and "private prompt" not in text and "127.0.0.1" not in text


def test_the_metrics_of_two_uvicorn_workers_add_up(world, tmp_path):
    member = world.member()
    port, shared = free_port(), tmp_path / "prometheus"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared), "DJANGO_SETTINGS_MODULE": "config.settings.test",
           "DATABASE_URL": database_url_for_subprocesses()}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port), "--workers", "2",
         "--no-access-log", "--log-level", "warning"],
        cwd=Path(settings.BASE_DIR), env=env, start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "the workers did not start"
            time.sleep(0.2)
        workers_seen = set()
        for _ in range(40):  # fresh connections, so the kernel spreads them over both workers
            response = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {member.api_key}"})
            assert response.status_code == 200
        workers_seen = {path.name.split("_")[-1] for path in shared.glob("counter_*.db")}
        text = httpx.get(f"{base}/metrics").text
        total = _sample(text, "headroom_gateway_requests_total", endpoint="/v1/models", status="200")
        print(f"\n40 requests over {len(workers_seen)} worker(s): /metrics counts {total:.0f}")
        assert total == 40
        assert len(workers_seen) == 2, workers_seen
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
