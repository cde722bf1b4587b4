"""Security properties as tests: no model files or URLs accepted anywhere, weights-only checkpoints,
Pillow pinned, no image data in logs, the API key (bearer and X-API-Key) with health and metrics open,
the web page's caching and Content-Security-Policy, and every counter series present from start-up."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import subprocess
import sys
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from fastapi.routing import APIRoute
from packaging.requirements import Requirement
from packaging.version import Version

from models.tasks import TASKS
from service.http.app import WEB_DIR, create_app
from service.metrics import rejection_reasons
from tests.reliability.hostile import noise_image, png_declaring, truncated
from tests.service.conftest import encode, gradient, make_settings, start_app
from tests.service.test_server import ROOT, env_for, free_port

pytestmark = pytest.mark.timeout(120)
PNG = {"content-type": "image/png"}
SUSPICIOUS = re.compile(r"url|uri|href|checkpoint|model|artifact|weights|path|file|source|plugin", re.I)


def _walk(routes):
    """Every route, including those of included routers (FastAPI wraps them)."""
    for route in routes:
        inner = getattr(route, "original_router", None) or getattr(route, "router", None)
        if inner is not None and hasattr(inner, "routes") and not isinstance(route, APIRoute):
            yield from _walk(inner.routes)
        else:
            yield route


def test_no_endpoint_accepts_model_files_or_urls(checkpoints) -> None:
    app = create_app(make_settings(checkpoints))
    posts, walked = [], []
    for route in _walk(app.routes):
        if not isinstance(route, APIRoute):
            continue
        walked.append(route.path)
        if route.methods - {"GET", "HEAD"}:
            posts.append((route.path, sorted(route.methods)))
        params = [p.alias for p in route.dependant.query_params + route.dependant.body_params]
        params += [p.alias for p in route.dependant.header_params + route.dependant.cookie_params]
        assert not [p for p in params if SUSPICIOUS.search(p)], (route.path, params)
    assert posts == [("/restore/{task}", ["POST"])], posts
    assert {"/restore/{task}", "/tasks", "/healthz", "/readyz", "/metrics"} <= set(walked), walked
    schema = app.openapi()
    bodies = {path: op for path, ops in schema["paths"].items() for op in ops.values() if "requestBody" in op}
    assert list(bodies) == ["/restore/{task}"]
    form = bodies["/restore/{task}"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"image", "mask"}
    query = {p["name"] for p in bodies["/restore/{task}"]["parameters"] if p["in"] == "query"}
    assert query == {"seed", "format", "quality", "timeout"}


@pytest.mark.anyio
async def test_urls_and_model_files_sent_as_images_are_refused(checkpoints) -> None:
    pth = io.BytesIO()
    import torch

    torch.save({"params": {"w": torch.zeros(1)}}, pth)
    async for live in start_app(make_settings(checkpoints)):
        for body in (b"http://127.0.0.1:1/x.png", b"file:///etc/passwd", pth.getvalue(), b"PK\x03\x04" + bytes(64)):
            r = await live.client.post("/restore/deblur", content=body, headers=PNG)
            assert (r.status_code, r.json()["code"]) == (415, "unsupported_format"), body[:20]
        r = await live.client.post(
            "/restore/deblur", params={"url": "http://127.0.0.1:1/a.png"}, content=b"", headers=PNG
        )
        assert r.status_code == 422  # unknown query parameters are ignored; the empty body is still refused


class _Payload:
    """Unpickling this runs `open(marker, "w")`: a checkpoint that executes code when loaded freely."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_payload_checkpoint_is_refused_at_startup(tmp_path: Path, checkpoints) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with evil.open("wb") as f:
        pickle.dump({"params": _Payload(str(marker))}, f)
    import torch

    zipped = tmp_path / "evil-zip.pth"
    torch.save({"params": _Payload(str(marker))}, zipped)  # the modern zip container, same payload
    for path in (evil, zipped):
        tasks = {"deblur": {"checkpoint": str(path), "variant": "deblur-small"}}
        env = env_for(checkpoints, DIFFIR_TASKS=json.dumps(tasks))
        cmd = [sys.executable, "-m", "service", "--port", str(free_port())]
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        # The port opens first and the models load behind it: the refusal is the JSON "start-up failed"
        # line, then exit 1 (never a traceback, never "ready").
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        failed = [e for e in events if e.get("msg") == "start-up failed"]
        assert len(failed) == 1, done.stderr
        assert path.name in failed[0]["error"] and "weights-only" in failed[0]["error"], failed
        assert not marker.exists(), "the pickled payload ran"


def test_pillow_is_pinned_at_a_fixed_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (req,) = [Requirement(r) for r in project["optional-dependencies"]["serve"] if Requirement(r).name == "pillow"]
    floor = min(Version(s.version) for s in req.specifier if s.operator in (">=", "=="))
    assert floor >= Version("12.3"), req
    assert Version(metadata.version("pillow")) >= Version("12.3")
    for lock in ("requirements-cpu.txt", "requirements-cuda.txt"):  # the images' hashed lock files
        pinned = re.search(r"^pillow==([^\s\\]+)", (ROOT / "docker" / lock).read_text(), re.M | re.I)
        assert pinned and Version(pinned.group(1)) >= Version("12.3"), lock


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.mark.anyio
async def test_logs_carry_request_ids_and_no_image_data(checkpoints) -> None:
    from service.logs import JsonFormatter

    capture = _Capture()
    capture.setFormatter(JsonFormatter())
    settings = make_settings(checkpoints, log_level="debug")
    image = encode(gradient(64, 48))
    async for live in start_app(settings):
        logging.getLogger("diffir").addHandler(capture)
        try:
            ok = await live.client.post("/restore/deblur", content=image, headers=PNG)
            bad = await live.client.post("/restore/deblur", content=truncated(noise_image(), "PNG"), headers=PNG)
            bomb = await live.client.post("/restore/deblur", content=png_declaring(50_000, 50_000), headers=PNG)
            boom = await live.client.post(
                "/restore/inpaint",
                files={"image": ("a.png", image), "mask": ("m.png", b"\x89PNG\r\n\x1a\n" + os.urandom(512))},
            )
        finally:
            logging.getLogger("diffir").removeHandler(capture)
    assert [ok.status_code, bad.status_code, bomb.status_code, boom.status_code] == [200, 422, 413, 422]
    entries = [json.loads(line) for line in capture.lines]  # every line is one JSON object
    ids = {r.headers["x-request-id"] for r in (ok, bad, bomb, boom)}
    logged = {e.get("request_id") for e in entries if e.get("msg") == "request"}
    assert ids <= logged, (ids, logged)
    text = "\n".join(capture.lines)
    assert not re.search(r"[A-Za-z0-9+/=]{120,}", text), "something like base64 data in the logs"
    assert "\\x89PNG" not in text and "\\u0089" not in text and "IHDR" not in text and "IDAT" not in text
    assert max(len(line) for line in capture.lines) < 2000


@pytest.mark.anyio
async def test_api_key_bearer_and_header_with_health_and_metrics_open(checkpoints) -> None:
    image = encode(gradient(24, 16))
    async for live in start_app(make_settings(checkpoints, api_key="s3cret-key")):
        c = live.client
        for headers in (
            {},
            {"authorization": "Bearer wrong"},
            {"x-api-key": "s3cret-ke"},
            {"authorization": "Basic s3cret-key"},
        ):
            r = await c.post("/restore/deblur", content=image, headers={**PNG, **headers})
            assert (r.status_code, r.json()["code"]) == (401, "unauthorized"), headers
            assert r.headers["www-authenticate"] == "Bearer"
        for headers in (
            {"authorization": "Bearer s3cret-key"},
            {"authorization": "bearer s3cret-key"},
            {"x-api-key": "s3cret-key"},
        ):
            r = await c.post("/restore/deblur", content=image, headers={**PNG, **headers})
            assert r.status_code == 200, headers
        # refused before the body is looked at: no hint about the task list or the input without the key
        r = await c.post("/restore/nope", content=b"", headers=PNG)
        assert r.status_code == 401
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await c.get(path)).status_code == 200, path


@pytest.mark.anyio
async def test_api_key_is_compared_in_constant_time(checkpoints, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every key check goes through `hmac.compare_digest` (constant time), with the presented and the
    configured key, and its answer decides: a spy that records the calls and flips nothing."""
    import hmac
    import secrets

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b) -> bool:
        calls.append(tuple(x.encode() if isinstance(x, str) else bytes(x) for x in (a, b)))  # type: ignore[arg-type]
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    monkeypatch.setattr(secrets, "compare_digest", spy)
    image = encode(gradient(24, 16))
    async for live in start_app(make_settings(checkpoints, api_key="s3cret-key")):
        wrong = await live.client.post("/restore/deblur", content=image, headers={**PNG, "x-api-key": "s3cret-kez"})
        assert calls == [(b"s3cret-kez", b"s3cret-key")] and wrong.status_code == 401
        right = await live.client.post("/restore/deblur", content=image, headers={**PNG, "x-api-key": "s3cret-key"})
        assert calls[1:] == [(b"s3cret-key", b"s3cret-key")] and right.status_code == 200


class _Inline(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        names = {k.lower() for k, _ in attrs}
        if tag == "script" and "src" not in names:
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("<style> element")
        self.problems += [f"{tag} {n}=" for n in names if n == "style" or n.startswith("on")]


@pytest.mark.anyio
async def test_web_page_headers_and_csp(checkpoints) -> None:
    page = _Inline()
    page.feed((WEB_DIR / "index.html").read_text())
    assert not page.problems, page.problems  # the strict policy below would block them
    async for live in start_app(make_settings(checkpoints)):
        for path in ("/", "/index.html", "/app.js", "/style.css"):
            r = await live.client.get(path)
            assert r.status_code == 200, path
            assert r.headers["cache-control"] == "no-cache", path
            csp = {d.split()[0]: d.split()[1:] for d in r.headers["content-security-policy"].split("; ")}
            assert (
                csp["default-src"] == ["'none'"] and csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
            )
            assert csp["frame-ancestors"] == ["'none'"] and csp["object-src"] == ["'none'"]
            assert "unsafe" not in r.headers["content-security-policy"]
        api = await live.client.get("/tasks")
        assert "content-security-policy" not in api.headers  # API answers are not the page's business


@pytest.mark.anyio
async def test_tasks_have_descriptions(checkpoints) -> None:
    async for live in start_app(make_settings(checkpoints)):
        tasks = (await live.client.get("/tasks")).json()["tasks"]
    assert {t["name"]: t["description"] for t in tasks} == {
        n: TASKS[n].description for n in ("deblur", "sr-x4", "inpaint")
    }


def _series(text: str, name: str) -> dict[tuple, float]:
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(1))))
            out[labels] = float(m.group(2))
    return out


@pytest.mark.anyio
async def test_counters_exist_at_zero_from_startup_and_cover_every_reason(checkpoints) -> None:
    from tests.reliability.hostile import CASES

    async for live in start_app(
        make_settings(checkpoints, max_body_bytes=1_000_000, max_input_pixels=512 * 512, max_output_pixels=512 * 512)
    ):
        before = (await live.client.get("/metrics")).text
        rejected = _series(before, "diffir_rejected_total")
        disconnected = _series(before, "diffir_disconnected_total")
        for task in ("deblur", "sr-x4", "inpaint"):
            assert disconnected[(("task", task),)] == 0
            for reason in rejection_reasons():
                assert rejected[(("reason", reason), ("task", task))] == 0, (task, reason)
        for case in CASES:  # every 4xx the corpus provokes lands on a pre-created series
            content, headers = case.body()
            await live.client.post(f"/restore/{case.task}", content=content, headers=headers, params=case.query)
        after = _series((await live.client.get("/metrics")).text, "diffir_rejected_total")
    assert set(after) == set(rejected), set(after) ^ set(rejected)
    assert sum(after.values()) > 30
