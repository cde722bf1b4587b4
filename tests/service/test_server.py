"""A real `python -m service` process on a free loopback port: HTTP end to end, faults, CLI.

Also the helpers the reliability suite's drain tests use to build a backlog and wait on it. Loopback only;
every wait is a bounded loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from service.client import Client, ClientError
from service.devserver import LiveServer as Server
from service.devserver import free_port
from tests.service.conftest import decode, encode, gradient

ROOT = Path(__file__).resolve().parents[2]


def env_for(checkpoints: dict[str, Path], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFIR_")}
    env.update(
        DIFFIR_TASKS=json.dumps({name: {"checkpoint": str(path)} for name, path in checkpoints.items()}),
        DIFFIR_WARMUP_SIZE="16",
        DIFFIR_LOG_JSON="true",
        # These tests are about serving, not about choosing a backend: `auto` would time and export every
        # checkpoint first (tests/service/test_auto_backend.py covers that).
        DIFFIR_BACKEND="torch",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def metric(url: str, sample: str) -> float:
    """One sample's value from `/metrics` (`sample` as printed, labels included); 0 when absent."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def wait_until_held(url: str, n: int, batches_before: float, task: str = "deblur", timeout_s: float = 60) -> float:
    """Wait until a server with batches of one holds all `n` requests just sent to `task`: queued
    (the queue-depth gauge), finished (batches counted since `batches_before`) or the one in the model.
    Seen on two polls in a row; returns the queue depth then. Fails rather than falling through."""
    deadline, streak, depth = time.monotonic() + timeout_s, 0, 0.0
    while time.monotonic() < deadline:
        depth = metric(url, f'diffir_queue_depth{{task="{task}"}}')
        finished = metric(url, f'diffir_batch_size_count{{task="{task}"}}') - batches_before
        streak = streak + 1 if depth + finished + 1 >= n else 0
        if streak == 2:
            return depth
        time.sleep(0.02)
    raise AssertionError(f"the server never held all {n} requests (queue depth {depth})")


def wait_for_connections(port: int, n: int, timeout_s: float = 30) -> None:
    """Wait until this process holds `n` established TCP connections to `port` on loopback."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port]
        if sum(c.status == psutil.CONN_ESTABLISHED for c in held) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{n} connections to port {port} were never established")


def start_as_backlog(srv: Server, threads: list[threading.Thread]) -> None:
    """Start client threads so that the server holds all of them as a backlog, however loaded the CPU.

    Racing the clients against a running server leaves the backlog to timing: on a busy machine the model
    keeps up with the clients and nothing queues. With the server stopped (SIGSTOP) the kernel still
    completes every handshake and buffers every upload; resumed, the event loop reads them all while the
    first is in the model."""
    srv.proc.send_signal(signal.SIGSTOP)
    try:
        for t in threads:
            t.start()
        wait_for_connections(srv.port, len(threads))
    finally:
        srv.proc.send_signal(signal.SIGCONT)


# What a request sent after SIGTERM may get besides 503 `draining`: once the listener closes, the connect is
# refused, or a connection the kernel had queued (or uvicorn had accepted but not read) is reset before
# any request is read. None of these can have run the request.
REFUSED_AFTER_SIGTERM = ("ConnectError", "ReadError", "RemoteProtocolError")


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


@pytest.mark.parametrize(
    ("extra", "status", "needle"),
    [
        ({"DIFFIR_TASKS": json.dumps({"deblur": {"checkpoint": "/nonexistent/x.safetensors"}})}, 1, "not found"),
        ({"DIFFIR_MAX_BATCH_SIZE": "0"}, 2, "DIFFIR_MAX_BATCH_SIZE"),
        ({"DIFFIR_TASKS": "{not json"}, 2, "DIFFIR_TASKS: Value error, not valid JSON"),
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


@pytest.mark.anyio
async def test_client_gone_while_queued_is_not_computed(checkpoints) -> None:
    """Under uvicorn on loopback, with the model held by a gate: a request whose client hangs up while
    it is queued is dropped before the model (counted as disconnected), never computed."""
    import asyncio

    import uvicorn

    from service.http.app import create_app
    from service.runtime.devices import resolve_device
    from service.runtime.torch_backend import TorchBackend
    from tests.service.conftest import GatedBackend, make_settings

    class Counting(GatedBackend):
        def __init__(self, inner) -> None:
            super().__init__(inner)
            self.batches: list[int] = []

        def run(self, lq, noise):
            self.batches.append(int(lq.shape[0]))
            return super().run(lq, noise)

    backend = Counting(TorchBackend(checkpoints["deblur"], None, resolve_device("cpu")))
    settings = make_settings({"deblur": checkpoints["deblur"]}, max_batch_size=1, warmup_size=0)
    app = create_app(settings, backends={"deblur": backend})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.ensure_future(server.serve())
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for _ in range(1500):
                if server.started and (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            png = {"content-type": "image/png"}
            first = asyncio.ensure_future(client.post("/restore/deblur", content=encode(gradient(32, 32)), headers=png))
            assert await asyncio.to_thread(backend.entered.wait, 30)  # the first request holds the model
            small = encode(gradient(16, 16))
            head = (
                f"POST /restore/deblur HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                f"Content-Length: {len(small)}\r\n\r\n"
            ).encode()
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + small)
            await writer.drain()
            for _ in range(1500):  # queued behind the first
                if 'diffir_queue_depth{task="deblur"} 1.0' in (await client.get("/metrics")).text:
                    break
                await asyncio.sleep(0.02)
            assert 'diffir_queue_depth{task="deblur"} 1.0' in (await client.get("/metrics")).text
            writer.close()  # the client hangs up while queued
            await writer.wait_closed()
            await asyncio.sleep(0)
            backend.release.set()
            assert (await first).status_code == 200
            for _ in range(1500):
                text = (await client.get("/metrics")).text
                if 'diffir_disconnected_total{task="deblur"} 1.0' in text:
                    break
                await asyncio.sleep(0.02)
            assert 'diffir_disconnected_total{task="deblur"} 1.0' in text
            assert backend.batches == [1]  # only the first one reached the model
            assert 'diffir_batch_size_count{task="deblur"} 1.0' in text
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
