"""A real `python -m service` process on a free loopback port: HTTP end to end, drain, faults, CLI.

Loopback only; every wait is a bounded loop.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.client import Client, ClientError
from tests.service.conftest import decode, encode, gradient

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(checkpoints: dict[str, Path], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFIR_")}
    env.update(
        DIFFIR_TASKS=json.dumps({name: {"checkpoint": str(path)} for name, path in checkpoints.items()}),
        DIFFIR_WARMUP_SIZE="16",
        DIFFIR_LOG_JSON="true",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


class Server:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("server not ready in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def server(checkpoints):
    metrics_port = free_port()
    srv = Server(env_for(checkpoints, DIFFIR_METRICS_PORT=str(metrics_port)))
    srv.metrics_port = metrics_port  # type: ignore[attr-defined]
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_end_to_end_over_http(server: Server) -> None:
    with Client(server.url) as client:
        assert client.ready()
        assert {t["name"] for t in client.tasks()} == {"deblur", "sr-x4", "inpaint"}
        result = client.restore("deblur", encode(gradient(40, 24)), seed=3)
        assert result.content_type == "image/png" and decode(result.data).size == (40, 24)
        assert result.request_id and "inference;dur=" in (result.server_timing or "")
        again = client.restore("deblur", encode(gradient(40, 24)), seed=3)
        assert again.data == result.data
        with pytest.raises(ClientError) as err:
            client.restore("inpaint", encode(gradient()))
        assert err.value.status == 422 and err.value.code == "missing_mask"
    assert httpx.get(f"{server.url}/metrics").status_code == 404  # served on the separate port instead
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text  # type: ignore[attr-defined]
    assert 'diffir_requests_total{code="200",task="deblur"} 2.0' in text


def test_sigterm_drains_accepted_requests(checkpoints) -> None:
    env = env_for({"deblur": checkpoints["deblur"]}, DIFFIR_MAX_BATCH_SIZE="1", DIFFIR_DRAIN_SECONDS="20")
    srv = Server(env)
    try:
        srv.wait_ready()
        data = encode(gradient(160, 128))
        n = 8
        results: list[int | str] = [0] * n

        def call(i: int) -> None:
            try:
                r = httpx.post(f"{srv.url}/restore/deblur", content=data, headers={"content-type": "image/png"},
                               timeout=60)  # fmt: skip
                results[i] = r.status_code
            except httpx.HTTPError as exc:
                results[i] = type(exc).__name__

        threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until the server holds several of them
            m = httpx.get(f"{srv.url}/metrics").text
            depth = next(
                (float(line.split()[-1]) for line in m.splitlines() if line.startswith("diffir_queue_depth")), 0
            )
            if depth >= 3:
                break
            time.sleep(0.02)
        held = int(depth)
        sent_at = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        try:  # new work is refused: the listener is closed, or (if not yet) 503 `draining`
            late = httpx.post(
                f"{srv.url}/restore/deblur", content=data, headers={"content-type": "image/png"}, timeout=5
            )
            assert late.status_code == 503 and late.json()["code"] == "draining"
        except httpx.HTTPError:
            pass
        for t in threads:
            t.join(60)
        assert srv.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean drain
        assert time.monotonic() - sent_at < 20 + 5
        # Everything queued when the signal came was answered with its image; anything later was
        # refused honestly (503 `draining` on an open connection, or a refused connection).
        assert results.count(200) >= held + 1, results
        assert set(results) <= {200, 503, "ConnectError"}, results
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("extra", "status", "needle"),
    [
        ({"DIFFIR_TASKS": json.dumps({"deblur": {"checkpoint": "/nonexistent/x.safetensors"}})}, 1, "not found"),
        ({"DIFFIR_MAX_BATCH_SIZE": "0"}, 2, "DIFFIR_MAX_BATCH_SIZE"),
        ({"DIFFIR_TASKS": "{not json"}, 2, "tasks"),
    ],
)
def test_startup_faults_are_one_line(checkpoints, extra: dict, status: int, needle: str) -> None:
    env = env_for(checkpoints, **extra)
    cmd = [sys.executable, "-m", "service", "--port", str(free_port())]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == status, done.stderr
    assert len(lines) == 1 and lines[0].startswith("diffir-serve:") and needle in lines[0], done.stderr


def test_local_cli_matches_the_server(checkpoints, tmp_path: Path) -> None:
    from PIL import Image

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(encode(gradient(40, 24)))
    (src / "sub" / "b.jpg").write_bytes(encode(gradient(24, 16), "JPEG"))
    (src / "c.png").write_bytes(encode(gradient(32, 32)))
    (src / "c.mask.png").write_bytes(encode(Image.new("L", (32, 32), 255)))
    out = tmp_path / "out"
    env = env_for(checkpoints)
    cmd = [sys.executable, "-m", "service", "restore", "deblur", str(src), "-o", str(out), "--seed", "3"]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3/3" in done.stderr  # the progress bar reached the end
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.*")) == ["a.png", "c.png", "sub/b.jpg"]
    srv = Server(env)
    try:
        srv.wait_ready()
        with Client(srv.url) as client:
            assert client.restore("deblur", src / "a.png", seed=3).data == (out / "a.png").read_bytes()
    finally:
        srv.stop()


def test_client_gone_while_queued_is_not_computed(checkpoints) -> None:
    env = env_for({"deblur": checkpoints["deblur"]}, DIFFIR_MAX_BATCH_SIZE="1")
    srv = Server(env)
    try:
        srv.wait_ready()
        slow = encode(gradient(640, 640))
        first = threading.Thread(
            target=lambda: httpx.post(
                f"{srv.url}/restore/deblur", content=slow, headers={"content-type": "image/png"}, timeout=120
            )
        )
        first.start()
        time.sleep(0.3)  # the first request is now decoding or in the model
        small = encode(gradient(16, 16))
        head = (
            f"POST /restore/deblur HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(small)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(head + small)
            time.sleep(0.3)  # queued behind the first
        first.join(120)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = httpx.get(f"{srv.url}/metrics").text
            if 'diffir_disconnected_total{task="deblur"} 1.0' in text:
                break
            time.sleep(0.1)
        assert 'diffir_disconnected_total{task="deblur"} 1.0' in text
        assert 'diffir_batch_size_count{task="deblur"} 1.0' in text  # only the first one reached the model
    finally:
        srv.stop()
