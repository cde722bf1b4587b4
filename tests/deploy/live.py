"""Real processes on loopback for the deployment tests: the service with tiny models, Prometheus, a DCGM stub."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from service.devserver import LiveServer, server_env
from tests.deploy.conftest import REPO

# The exposition NVIDIA's dcgm-exporter serves (default counters), for two GPUs of one host.
DCGM_EXPOSITION = """\
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-0",device="nvidia0",modelName="NVIDIA H100",Hostname="gpu-box"} 87
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-1",device="nvidia1",modelName="NVIDIA H100",Hostname="gpu-box"} 12
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).
# TYPE DCGM_FI_DEV_FB_FREE gauge
DCGM_FI_DEV_FB_FREE{gpu="0",UUID="GPU-0",device="nvidia0",modelName="NVIDIA H100",Hostname="gpu-box"} 60000
DCGM_FI_DEV_FB_FREE{gpu="1",UUID="GPU-1",device="nvidia1",modelName="NVIDIA H100",Hostname="gpu-box"} 80000
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-0",device="nvidia0",modelName="NVIDIA H100",Hostname="gpu-box"} 21000
DCGM_FI_DEV_FB_USED{gpu="1",UUID="GPU-1",device="nvidia1",modelName="NVIDIA H100",Hostname="gpu-box"} 1000
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30):
    """(status, headers, body) of one request; HTTP errors are answers, not exceptions."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except OSError as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last})")


def png(width: int, height: int, seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def tiny_checkpoints(root: Path) -> dict[str, Path]:
    """Random-weight deblur and ×4 SR models (dim 8): fast enough for a shared 2-core CPU."""
    import torch

    from models import CPENConfig, DiffIRS2, DIRformerConfig, ModelConfig, save_checkpoint

    g = DIRformerConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1)
    configs = {
        "deblur": ModelConfig(name="deploy-deblur", kind="deblur", dirformer=g, cpen=CPENConfig(n_resblocks=1)),
        "sr-x4": ModelConfig(name="deploy-sr-x4", kind="sr", scale=4, dirformer=g, cpen=CPENConfig(n_resblocks=1)),
    }
    out = {}
    for task, config in configs.items():
        torch.manual_seed(0)
        net = DiffIRS2(config).eval()
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(0.5)
        out[task] = save_checkpoint(net, root / task, {"version": "deploy-test"})
    return out


class Process:
    """A third-party child process (Prometheus, nginx; the service goes through LiveServer) in its own process group,
    its output in a log file; always cleaned up."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def service_env(checkpoints: dict[str, Path], **settings: str) -> dict[str, str]:
    defaults = {
        "DIFFIR_TASKS": json.dumps({t: {"checkpoint": str(p)} for t, p in checkpoints.items()}),
        "DIFFIR_WARMUP_SIZE": "16",
        "DIFFIR_TORCH_THREADS": "1",
        "DIFFIR_MAX_BATCH_SIZE": "4",
        "DIFFIR_MAX_WAIT_MS": "20",
        "DIFFIR_LOG_JSON": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return server_env(**{**defaults, **settings})


@contextlib.contextmanager
def running_service(
    tmp: Path,
    checkpoints: dict[str, Path],
    prefix: tuple[str, ...] = (),
    extra_env: dict | None = None,
    **settings: str,
) -> Iterator[tuple[LiveServer, str]]:
    """`python -m service` on a free loopback port (optionally under a wrapper command), ready when yielded; its
    output stays in `tmp` for a failed test's post-mortem."""
    env = {**service_env(checkpoints, **settings), **(extra_env or {})}
    fd, log = tempfile.mkstemp(prefix="service-", suffix=".log", dir=tmp)
    os.close(fd)
    with LiveServer(env, prefix=prefix, log=Path(log), stop_timeout_s=15) as srv:
        yield srv, srv.url


@contextlib.contextmanager
def dcgm_stub() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = DCGM_EXPOSITION.encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, _, body = http("GET", url, timeout=10)
        payload = json.loads(body)
        assert status == 200 and payload["status"] == "success", f"{url}: {status} {payload}"
        return payload["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]


@contextlib.contextmanager
def running_prometheus(tmp: Path, config: str, binary: str) -> Iterator[Prometheus]:
    port = free_port()
    (tmp / "prometheus.yml").write_text(config)
    cmd = [
        binary,
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
    ]
    proc = Process(cmd, tmp / "prometheus.log")
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: http("GET", prom.base + "/-/ready", timeout=2)[0] == 200, 60, "Prometheus to be ready")
        yield prom
    finally:
        proc.stop()


_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def envsubst(template: str, env: dict[str, str]) -> str:
    """What the nginx image's entrypoint does to /etc/nginx/templates: `${NAME}` replaced for the variables that are
    set, everything else (nginx's own `$host`, unset names) left as it is."""
    return _PLACEHOLDER.sub(lambda m: env.get(m.group(1), m.group(0)), template)


# The main context the nginx image provides around conf.d (its /etc/nginx/nginx.conf), for a native nginx
# running unprivileged-style: everything it writes stays under `root`.
NGINX_MAIN = """\
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    include {root}/conf.d/*.conf;
}}
"""


@contextlib.contextmanager
def running_nginx(root: Path, site_conf: str, port: int, binary: str) -> Iterator[Process]:
    """Debian's nginx with `site_conf` as its only conf.d file, listening on 127.0.0.1:`port`, ready when yielded."""
    (root / "conf.d").mkdir(parents=True)
    (root / "conf.d" / "site.conf").write_text(site_conf)
    main = NGINX_MAIN.format(root=root)
    if os.geteuid() == 0:  # workers would otherwise run as `nobody`, which cannot enter pytest's 0700 tmp dirs
        main = "user root root;\n" + main
    (root / "nginx.conf").write_text(main)
    # -e: the start-up error log too stays under `root` (the default is /var/log/nginx).
    args = ["-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")]
    check = subprocess.run([binary, "-t", *args], capture_output=True)
    assert check.returncode == 0, check.stderr.decode()
    proc = Process([binary, *args], root / "nginx.out")

    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    try:
        wait_for(lambda: listening() or not proc.alive(), 20, "nginx to listen")
        assert proc.alive(), proc.output() + (root / "error.log").read_text()
        yield proc
    finally:
        proc.stop()
