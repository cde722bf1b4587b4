"""Start-up timing of `python -m service`: cold (empty cache) and warm (the cache the cold start left).

    .venv/bin/python -m bench.startup --out bench/results                 # shipped models, default settings
    .venv/bin/python -m bench.startup --out /tmp/x --prepared /tmp/prep   # with `python -m service prepare` output

For each start it records, from the moment the process is spawned: the first HTTP answer on the port (any
status), the first `/healthz` 200, the first `/readyz` 200, and the longest silence between two log lines
before ready. The port is polled every 0.1 s. Each start is stopped with SIGTERM once ready.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.machine import cpu_flags
from service.devserver import ROOT, free_port, server_env

log = logging.getLogger("bench.startup")


def _watch_lines(stream, stamps: list[float], lines: list[str]) -> None:
    for line in iter(stream.readline, b""):
        stamps.append(time.monotonic())
        lines.append(line.decode(errors="replace"))


def _steps(lines: list[str]) -> dict:
    """From the JSON log: seconds of each tuning, the `auto` choices and how many exports a start built."""
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    done = [e for e in entries if e.get("msg") == "start-up step done"]
    return {
        "tune_s": {e.get("task"): e.get("seconds") for e in done if e.get("step") == "tune"},
        "exports_built": sum(1 for e in done if e.get("step") == "export"),
        "chosen": {e.get("task"): e.get("chosen") for e in entries if e.get("msg") == "auto backend"},
        "threads": next((e.get("threads") for e in entries if e.get("msg") == "threads"), None),
    }


def one_start(env: dict[str, str], timeout_s: float) -> dict[str, float | None]:
    """Spawn the server, poll it until `/readyz` is 200 (or `timeout_s`), stop it; seconds since spawn."""
    port = free_port()
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stamps: list[float] = []
    lines: list[str] = []
    reader = threading.Thread(target=_watch_lines, args=(proc.stderr, stamps, lines), daemon=True)
    reader.start()
    first_answer = healthy = ready = None
    url = f"http://127.0.0.1:{port}"
    try:
        while time.monotonic() - started < timeout_s and proc.poll() is None:
            now = time.monotonic() - started
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200 and healthy is None:
                    healthy = now
                first_answer = now if first_answer is None else first_answer
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    ready = time.monotonic() - started
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    finally:
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    end = started + ready if ready is not None else stopped
    before = [started] + [s for s in stamps if s <= end] + [end]
    gap = max(b - a for a, b in itertools.pairwise(before))
    return {
        "first_answer_s": _round(first_answer),
        "healthz_200_s": _round(healthy),
        "ready_s": _round(ready),
        "longest_log_silence_s": round(gap, 2),
        "log_lines_before_ready": len(before) - 2,
        "exit_status": proc.returncode,
        **_steps(lines),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def to_markdown(result: dict) -> str:
    rows = [
        "| start | first port answer | /healthz 200 | /readyz 200 | longest log silence | log lines before ready |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["starts"].items():
        cells = [r["first_answer_s"], r["healthz_200_s"], r["ready_s"], r["longest_log_silence_s"]]
        shown = ["—" if c is None else f"{c:.1f} s" for c in cells]
        rows.append(f"| {name} | " + " | ".join(shown) + f" | {r['log_lines_before_ready']} |")
    m = result["machine"]
    notes = []
    for name, r in result["starts"].items():
        if r.get("chosen"):
            tuned = ", ".join(f"{t} {s:.1f} s" for t, s in r["tune_s"].items())
            notes.append(f"- {name}: `auto` chose {r['chosen']}; tuning per task: {tuned}; exports built: "
                         f"{r['exports_built']}; threads: {r['threads']}")  # fmt: skip
    return (
        f"# `python -m service` start-up (shipped models, `DIFFIR_BACKEND={result['backend']}`)\n\n"
        f"{m['cpus']} CPUs ({', '.join(m['cpu_flags']) or 'no AVX2'}), {m['platform']}, load average before / "
        f"after: {result['load'][0]:.1f} / {result['load'][1]:.1f} (a shared machine); "
        f"prepared exports: {result['prepared'] or 'none'}. Seconds from spawning the process.\n\n"
        + "\n".join(rows)
        + "\n\ncold: empty cache folder; warm: the cache the cold start left (autotune choice, exports).\n"
        + ("\n" + "\n".join(notes) + "\n" if notes else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prepared", type=Path, help="DIFFIR_PREPARED_DIR for both starts")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--name", default="startup")
    parser.add_argument("--backend", default="auto", help="DIFFIR_BACKEND for both starts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="diffir-startup-") as cache:
        extra = {"DIFFIR_CACHE_DIR": cache, "DIFFIR_LOG_JSON": "true", "DIFFIR_BACKEND": args.backend}
        if args.prepared:
            extra["DIFFIR_PREPARED_DIR"] = str(args.prepared)
        env = server_env(**extra)
        starts = {}
        for name in ("cold", "warm"):
            starts[name] = one_start(env, args.timeout)
            log.info("%s: %s", name, starts[name])
    result = {
        "machine": {"cpus": os.cpu_count(), "cpu_flags": cpu_flags(), "platform": platform.platform()},
        "backend": args.backend,
        "prepared": str(args.prepared) if args.prepared else None,
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "starts": starts,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
