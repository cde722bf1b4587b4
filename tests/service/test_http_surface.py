"""What a user of the HTTP API meets besides restoring: offline /docs, CORS, the standard Prometheus
collectors, and one JSON log stream (uvicorn's lines included) with health probes at debug."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest

from service.logs import LOGGER
from tests.service.conftest import LogRecords, encode, gradient, identity_backends, make_settings, start_app
from tests.service.test_server import ROOT, env_for, free_port

pytestmark = pytest.mark.anyio
ORIGIN = "https://app.example"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization",
}


async def _live(checkpoints, **overrides):
    return start_app(make_settings(checkpoints, **overrides), backends=identity_backends())


async def test_cors_is_off_by_default(checkpoints) -> None:
    async for live in await _live(checkpoints):
        pre = await live.client.options("/restore/deblur", headers=PREFLIGHT)
        assert pre.status_code == 405
        assert "access-control-allow-origin" not in pre.headers
        ok = await live.client.get("/tasks", headers={"Origin": ORIGIN})
        assert ok.status_code == 200 and "access-control-allow-origin" not in ok.headers


async def test_cors_preflight_and_response_for_configured_origins(checkpoints) -> None:
    async for live in await _live(checkpoints, cors_origins=(ORIGIN,)):
        pre = await live.client.options("/restore/deblur", headers=PREFLIGHT)
        assert pre.status_code == 200, pre.text
        assert pre.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        other = await live.client.options("/restore/deblur", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers

        body = encode(gradient(24, 16))
        done = await live.client.post(
            "/restore/deblur", content=body, headers={"Origin": ORIGIN, "Content-Type": "image/png"}
        )
        assert done.status_code == 200
        assert done.headers["access-control-allow-origin"] == ORIGIN
        exposed = done.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed and "server-timing" in exposed


def test_cors_origin_setting_parses_a_comma_list_and_refuses_paths(monkeypatch) -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    monkeypatch.setenv("DIFFIR_CORS_ORIGINS", "https://a.example, http://localhost:3000")
    assert Settings().cors_origins == ("https://a.example", "http://localhost:3000")
    monkeypatch.setenv("DIFFIR_CORS_ORIGINS", "https://a.example/app")
    with pytest.raises(ValidationError, match="CORS origin"):
        Settings()


def _sample(text: str, name: str) -> float:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


async def test_metrics_include_process_and_python_collectors(checkpoints) -> None:
    async for live in await _live(checkpoints):
        text = (await live.client.get("/metrics")).text
        assert _sample(text, "process_resident_memory_bytes") > 10e6  # a Python process with torch loaded
        assert _sample(text, "process_cpu_seconds_total") > 0
        assert _sample(text, "process_open_fds") > 0
        assert re.search(r'^python_info\{.*version="\d+\.\d+\.\d+".*\} 1\.0$', text, re.M)
        assert _sample(text, "python_gc_objects_collected_total") >= 0
        assert "diffir_queue_depth" in text  # ours are still there beside them


async def test_docs_load_every_asset_from_this_server(checkpoints) -> None:
    async for live in await _live(checkpoints):
        assert (await live.client.get("/redoc")).status_code == 404  # ReDoc would fetch its logo from a CDN
        for page in ("/docs",):
            html = (await live.client.get(page)).text
            urls = re.findall(r'(?:src|href)="([^"]+)"', html)
            assert urls, html
            assert not [u for u in urls if re.match(r"(https?:)?//", u)], f"{page} loads from elsewhere: {urls}"
            for url in urls:
                asset = await live.client.get(url)
                assert asset.status_code == 200, url
                assert len(asset.content) > 1000, url
        assert "openapi.json" in (await live.client.get("/docs")).text


async def test_health_probes_log_at_debug_other_requests_at_info(checkpoints) -> None:
    capture = LogRecords()
    async for live in await _live(checkpoints, log_level="debug"):
        logging.getLogger(LOGGER).addHandler(capture)
        try:
            for path in ("/healthz", "/readyz", "/metrics", "/tasks"):
                assert (await live.client.get(path)).status_code == 200
        finally:
            logging.getLogger(LOGGER).removeHandler(capture)
    levels = {r.fields["path"]: r.levelno for r in capture.records if r.getMessage() == "request"}
    assert levels == {"/healthz": logging.DEBUG, "/readyz": logging.DEBUG, "/metrics": logging.DEBUG, "/tasks": 20}


def test_every_server_log_line_is_json_uvicorn_included(checkpoints) -> None:
    """A real `python -m service` at the default level: uvicorn's own start-up and shutdown lines and ours
    are one JSON object per line; the probes polled while it starts leave no access lines."""
    port = free_port()
    env = env_for({"deblur": checkpoints["deblur"]})
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # one thread reads stderr from start to end: the pipe never fills while the test polls, and no line is lost
    # (communicate(timeout=...) reads the raw descriptor, skipping what a loop here had buffered ahead)
    lines: list[str] = []
    started = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "Application startup complete" in line:
                started.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert started.wait(timeout=120), "".join(lines)  # gated on the log line itself, not on a sleep
        ready = False
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(600):  # bounded: at most 60 s of probes while the models warm up
                ready = client.get("/readyz").status_code == 200
                if ready:
                    break
                time.sleep(0.1)
        assert ready, "not ready within 60 s"
        assert httpx.get(f"http://127.0.0.1:{port}/tasks", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        reader.join(timeout=10)
    entries = [json.loads(line) for line in lines if line.strip()]  # raises on any plain-text line
    loggers = {e["logger"] for e in entries}
    assert {"uvicorn.error", "diffir"} <= loggers, loggers
    messages = [e["msg"] for e in entries]
    # the service binds the port itself (a taken one is named in one line) and says so once uvicorn serves it
    assert messages.index("Application startup complete.") < messages.index("listening"), messages
    requests = [e["path"] for e in entries if e["msg"] == "request"]
    assert requests == ["/tasks"], requests
