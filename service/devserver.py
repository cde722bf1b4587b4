"""Start `python -m service` on a free loopback port and wait until `/readyz` says 200.

The one helper tests and benchmarks share for a real server process (no model or port is global):
`with LiveServer(env) as srv: httpx.get(srv.url + "/tasks")`. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(**settings: str) -> dict[str, str]:
    """This process's environment without any DIFFIR_* variable, plus `settings` and PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFIR_")}
    env.update(PYTHONPATH=str(ROOT), **settings)
    return env


class LiveServer:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)]
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115  a file, not a pipe: a chatty server never blocks
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self._log, text=True)

    def logs(self) -> str:
        """Everything the server wrote to stderr so far (its JSON log lines)."""
        self._log.seek(0)
        return self._log.read()

    def wait_ready(self, timeout_s: float = 120) -> LiveServer:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.logs()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready within {timeout_s:g} s")

    def metric(self, name: str, **labels: str) -> float:
        """The current value of one Prometheus sample (0 when absent)."""
        import httpx

        want = [f'{k}="{v}"' for k, v in labels.items()]
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            named = line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " ")
            if named and all(w in line for w in want):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> LiveServer:
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
