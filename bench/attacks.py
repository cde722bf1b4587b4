"""Attack benchmark: header and chunk floods, header-field floods and a connection flood, each within the caps.

    .venv/bin/python -m bench.attacks --out bench/results      # ~2 min on the shared 2-core CPU

Against a real `python -m service` (`service.devserver.LiveServer`, default settings, `deblur` with the
shipped weights on the torch backend). For each attack: the time until it is answered and with what,
the server's resident memory (RSS) before, at its peak during and 1 s after, and the latency of 32²
restore requests that one client sends back to back beside it, against their latency alone.

* **image floods** (32 MB uploads, the body cap): a JPEG of 8 million empty APP0 segments, a JPEG of 16
  million restart markers, a PNG of 2.7 million empty private chunks, a WebP of 4 million empty chunks, a
  TIFF of 4 million one-row strips over 16 x 16 pixels (`tests.reliability.floods`);
* **header floods**: 6 million `a:b` header fields (30 MB), one 100 MB header field;
* **connection flood**: 3000 connections opened as fast as the client can.

Results go to `<out>/attacks.json` and `<out>/attacks.md`.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from bench.machine import cpu_flags
from service.devserver import LiveServer, server_env
from tests.reliability.floods import FLOODS
from tests.service.conftest import encode, gradient

BODY_BYTES = 32 * 1024 * 1024 - 4096
SMALL = encode(gradient(32, 32))
MIB = 2**20


class Sampler(threading.Thread):
    """The server's RSS every 20 ms while `running`."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)


class SmallClient(threading.Thread):
    """32² restores back to back (or `/healthz` probes every 50 ms); their latencies."""

    def __init__(self, url: str, probe: bool = False) -> None:
        super().__init__(daemon=True)
        self.url, self.probe, self.running, self.latencies, self.statuses = url, probe, True, [], []

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while self.running:
                started = time.perf_counter()
                if self.probe:
                    r = client.get(f"{self.url}/healthz")
                else:
                    r = client.post(f"{self.url}/restore/deblur", content=SMALL, headers={"content-type": "image/png"})
                self.latencies.append(time.perf_counter() - started)
                self.statuses.append(r.status_code)
                if self.probe:
                    time.sleep(0.05)


def alone(url: str, seconds: float = 3.0) -> float:
    """Median latency of 32² restores with nothing else running (at least 3), measured just before an attack:
    the shared machine's load changes from minute to minute."""
    client = SmallClient(url)
    client.start()
    time.sleep(seconds)
    while len(client.latencies) < 3:
        time.sleep(0.05)
    client.running = False
    client.join()
    return statistics.median(client.latencies)


def upload(url: str, data: bytes, media: str) -> tuple[int, str]:
    r = httpx.post(f"{url}/restore/deblur", content=data, headers={"content-type": media}, timeout=600)
    code = r.json().get("code", "") if r.headers.get("content-type") == "application/json" else ""
    return r.status_code, code


def raw_send(port: int, data: bytes) -> tuple[int, str]:
    """Send `data` on one connection until done or refused, then read the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=600)
    try:
        sent = 0
        while sent < len(data):
            sent += sock.send(data[sent : sent + (1 << 20)])
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    if not reply.startswith(b"HTTP/"):
        return 0, "closed without an answer"
    status = int(reply.split(b" ")[1])
    try:
        code = json.loads(reply.partition(b"\r\n\r\n")[2]).get("code", "")
    except ValueError:
        code = ""
    return status, code


def connection_flood(port: int, count: int = 3000) -> tuple[int, str]:
    socks, statuses = [], {}
    for _ in range(count):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        except OSError as exc:
            statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
    time.sleep(1.0)
    for sock in socks:
        sock.settimeout(0.01)
        try:
            head = sock.recv(64)
            key = head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else "closed"
        except (TimeoutError, BlockingIOError):
            key = "open (no answer yet)"
        except ConnectionResetError:
            key = "reset"
        statuses[key] = statuses.get(key, 0) + 1
        sock.close()
    return 0, ", ".join(f"{v} x {k}" for k, v in sorted(statuses.items()))


def measure(srv: LiveServer, name: str, attack: Callable[[], tuple[int, str]]) -> dict:
    baseline = alone(srv.url)
    proc = psutil.Process(srv.proc.pid)
    before, fds_before = proc.memory_info().rss, proc.num_fds()
    sampler = Sampler(srv.proc.pid)
    small, probe = SmallClient(srv.url), SmallClient(srv.url, probe=True)
    for thread in (sampler, small, probe):
        thread.start()
    time.sleep(0.3)
    started = time.perf_counter()
    status, code = attack()
    answered = time.perf_counter() - started
    time.sleep(1.0)
    for thread in (small, probe, sampler):
        thread.running = False
        thread.join()
    after = proc.memory_info().rss
    lat = small.latencies
    row = {
        "attack": name,
        "answer": f"{status} {code}".strip() if status else code,
        "answered_s": round(answered, 3),
        "rss_before_mib": round(before / MIB, 1),
        "rss_peak_mib": round(sampler.peak / MIB, 1),
        "rss_after_mib": round(after / MIB, 1),
        "rss_added_mib": round((sampler.peak - before) / MIB, 1),
        "fds_before": fds_before,
        "fds_after": proc.num_fds(),
        "small_alone_median_s": round(baseline, 3),
        "small_requests": len(lat),
        "small_non_200": sum(s != 200 for s in small.statuses),
        "small_median_s": round(statistics.median(lat), 3) if lat else None,
        "small_max_s": round(max(lat), 3) if lat else None,
        "small_max_slower_s": round(max(lat) - baseline, 3) if lat else None,
        "healthz_probes": len(probe.latencies),
        "healthz_max_s": round(max(probe.latencies), 3) if probe.latencies else None,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--label", default="", help="suffix of the result files (e.g. a before-the-fix run)")
    args = parser.parse_args()
    env = server_env(DIFFIR_TASKS=json.dumps({"deblur": {}}), DIFFIR_BACKEND="torch", DIFFIR_LOG_LEVEL="warning")
    with LiveServer(env) as srv:
        with httpx.Client(timeout=60) as client:
            for _ in range(3):  # warm
                client.post(f"{srv.url}/restore/deblur", content=SMALL, headers={"content-type": "image/png"})
        floods = {
            "JPEG, 8 million empty APP0 segments (32 MB)": FLOODS["jpeg-app0"],
            "JPEG, 16 million restart markers (32 MB)": FLOODS["jpeg-restart"],
            "PNG, 2.7 million empty private chunks (32 MB)": FLOODS["png-chunks"],
            "WebP, 4 million empty chunks (32 MB)": FLOODS["webp-chunks"],
            "TIFF, 4 million one-row strips over 16 x 16 pixels (32 MB)": FLOODS["tiff-strips"],
        }
        rows = []
        for name, (make, media) in floods.items():
            data = make(BODY_BYTES)
            rows.append(measure(srv, name, lambda d=data, m=media: upload(srv.url, d, m)))
        fields = b"POST /restore/deblur HTTP/1.1\r\nHost: x\r\n" + b"a:b\r\n" * 6_000_000 + b"\r\n"
        rows.append(measure(srv, "6 million `a:b` header fields (30 MB)", lambda: raw_send(srv.port, fields)))
        huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-big: " + b"y" * (100 * MIB) + b"\r\n\r\n"
        rows.append(measure(srv, "one 100 MB header field", lambda: raw_send(srv.port, huge)))
        rows.append(measure(srv, "3000 connections at once", lambda: connection_flood(srv.port)))
        ready = httpx.get(f"{srv.url}/readyz", timeout=10).status_code
    flags = " ".join(cpu_flags()) or "none of avx2/avx512/amx"
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores (shared), {flags}",
        "load_average": [round(x, 1) for x in psutil.getloadavg()],
        "readyz_after": ready,
        "attacks": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "attacks" + (f"-{args.label}" if args.label else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Attacks within the caps (`python -m bench.attacks`)",
        "",
        f"Machine: {result['machine']}; load average at the end {result['load_average']} (other jobs shared it).",
        "Server: `python -m service`, default settings, `deblur` (shipped weights, torch). `/readyz` after all"
        f' attacks: {ready}. "alone": the median 32² latency over the 3 s just before each attack.',
        "",
        "| attack | answer | answered in | RSS before / peak / after (MiB) | 32² alone | 32² beside it: n, max"
        " (max − alone) | `/healthz` beside it: n, max |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['answer']} | {r['answered_s']} s | {r['rss_before_mib']} / {r['rss_peak_mib']} /"
            f" {r['rss_after_mib']} | {r['small_alone_median_s']} s | {r['small_requests']}"
            f" ({r['small_non_200']} not 200), {r['small_max_s']} s ({r['small_max_slower_s']:+} s) |"
            f" {r['healthz_probes']}, {r['healthz_max_s']} s |"
        )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
