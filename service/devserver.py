"""Start `python -m service` on a free loopback port and wait until `/readyz` says 200.

The one helper tests and benchmarks share for a real server process (no model or port is global):
`with LiveServer(env) as srv: httpx.get(srv.url + "/tasks")`. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
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
    """One server process; `prefix` runs it under a wrapper command (e.g. `unshare ... sh -c ... "$@"`).

    stdout and stderr go to one file (`log`, else an anonymous temporary file), never a pipe: a chatty server never
    blocks. The child leads its own process group, so a wrapper's children die with it. `ready_timeout_s` and
    `stop_timeout_s` are the bounds `with` uses.
    """

    def __init__(
        self,
        env: dict[str, str],
        *,
        prefix: Sequence[str] = (),
        log: Path | None = None,
        ready_timeout_s: float = 120,
        stop_timeout_s: float = 30,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout_s, self.stop_timeout_s = ready_timeout_s, stop_timeout_s
        cmd = [*prefix, sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)]
        self._log = log.open("w+b") if log else tempfile.TemporaryFile()  # noqa: SIM115  open while the server runs
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def logs(self) -> str:
        """Everything the server wrote so far (its JSON log lines). Read with pread: the child shares this file's
        offset, so seeking it would make the server write over its own log."""
        fd = self._log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout_s: float | None = None) -> LiveServer:
        import httpx

        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"server exited: {self.logs()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready within {timeout_s:g} s: {self.logs()[-3000:]}")

    def metric(self, name: str, **labels: str) -> float:
        """The current value of one Prometheus sample (0 when absent)."""
        import httpx

        want = [f'{k}="{v}"' for k, v in labels.items()]
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            named = line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " ")
            if named and all(w in line for w in want):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM (the server drains), then SIGKILL to the whole group after `timeout_s`."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout_s if timeout_s is None else timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def __enter__(self) -> LiveServer:
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
