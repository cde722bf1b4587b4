"""Service benchmark: throughput and latency with batching on/off, overhead, peak RSS of a large input.

    .venv/bin/python -m bench.service_bench --out bench/results          # full run (~8-10 min, 2 cores)
    .venv/bin/python -m bench.service_bench --out /tmp/x --quick         # smoke run

Everything in the results files comes from one run. What it measures, on this CPU, with the
`deblur-small` preset (the shipped weights when present, else the same architecture with random
weights: the cost is identical) at 256x256, torch eager (`DIFFIR_BACKEND=torch`):

* the bare model: `backend.run` on a padded 256² batch of 1, min and median of repeated calls;
* the model time per image at batch 1, 2 and 4, the sizes alternated every repetition;
* two real `python -m service` processes on loopback ports, one with batching on (`max_batch_size`
  4) and one with it off (1), hit by an asyncio httpx client at concurrency 1, 4 and 8. The two are
  interleaved: every round runs each concurrency level against both servers back to back (the order
  alternating between rounds), so the shared machine's load drifts over both alike; per
  configuration the table gives the median and min of the rounds' requests/s, the median of the
  rounds' p50 latency, p95/p99 over all rounds' requests, and the batch sizes read back from
  `diffir_batch_size`;
* the service's overhead at concurrency 1 (batching off, the CPU default): each request's
  client-side latency over the model time of that same request (read from its `Server-Timing`
  header), so both sides share the machine's load at that instant;
* peak RSS of a server process (sampled every 20 ms) while it restores one large image
  (`--rss-size`, default 1280², above the 1024² tiling threshold) with the default tiling settings.

Results go to `<out>/service.json` and `<out>/service.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from service.devserver import LiveServer, server_env

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.service")
BLOCK_REQUESTS = {1: 3, 4: 8, 8: 8}
"""Requests per (server, concurrency level, round) block."""
TASK = "deblur"


def checkpoint(tmp: Path) -> tuple[Path, str]:
    from models import DiffIRS2, get_preset, save_checkpoint
    from models.tasks import TASKS

    shipped = TASKS[TASK].default_checkpoint_path()
    if shipped is not None and shipped.is_file():
        return shipped, "shipped weights"
    torch.manual_seed(0)
    return save_checkpoint(DiffIRS2(get_preset(TASKS[TASK].preset)).eval(), tmp / TASK), "random weights"


def test_image(size: int, quality: int | None = None) -> bytes:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    rgb = np.stack([x, y, (x + y) / 2], axis=2) * 200 + rng.normal(0, 8, (size, size, 3))
    im = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    im.save(buf, "JPEG" if quality else "PNG", **({"quality": quality} if quality else {"compress_level": 1}))
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# --- bare model ------------------------------------------------------------------------------------
def bare_model(ckpt: Path, size: int, reps: int) -> dict:
    """`backend.run` timed on a worker thread set up exactly like the service's inference thread."""
    from concurrent.futures import ThreadPoolExecutor

    from service.runtime.devices import configure_inference_thread
    from service.runtime.torch_backend import TorchBackend

    backend = TorchBackend(ckpt, None, torch.device("cpu"))
    lq, noise = torch.rand(1, 3, size, size), torch.randn(1, 256)

    def timed() -> float:
        t0 = time.perf_counter()
        backend.run(lq, noise)
        return time.perf_counter() - t0

    with ThreadPoolExecutor(1, initializer=configure_inference_thread) as pool:
        pool.submit(timed).result()
        times = [pool.submit(timed).result() for _ in range(reps)]
    return {"min_s": min(times), "median_s": statistics.median(times), "reps": reps}


def batch_cost(ckpt: Path, size: int, reps: int, batches: tuple[int, ...] = (1, 2, 4)) -> dict:
    """Per-image model time at each batch size, alternating sizes every repetition so the shared
    machine's load hits them alike (the basis of the CPU default DIFFIR_MAX_BATCH_SIZE=1)."""
    from concurrent.futures import ThreadPoolExecutor

    from service.runtime.devices import configure_inference_thread
    from service.runtime.torch_backend import TorchBackend

    backend = TorchBackend(ckpt, None, torch.device("cpu"))

    def per_image(n: int) -> float:
        lq, noise = torch.rand(n, 3, size, size), torch.randn(n, 256)
        t0 = time.perf_counter()
        backend.run(lq, noise)
        return (time.perf_counter() - t0) / n

    times: dict[int, list[float]] = {n: [] for n in batches}
    with ThreadPoolExecutor(1, initializer=configure_inference_thread) as pool:
        for n in batches:
            pool.submit(per_image, n).result()
        for _ in range(reps):
            for n in batches:
                times[n].append(pool.submit(per_image, n).result())
    return {str(n): {"min_s": min(v), "median_s": statistics.median(v)} for n, v in times.items()}


def server_timing(header: str, phase: str) -> float:
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name == phase:
            return float(dur) / 1000
    return float("nan")


# --- a real server -----------------------------------------------------------------------------------
def server(ckpt: Path, **settings: str) -> LiveServer:
    """A `python -m service` serving `ckpt`, for `with`: ready within 180 s, 60 s to drain when stopped."""
    defaults = {
        "DIFFIR_TASKS": json.dumps({TASK: {"checkpoint": str(ckpt)}}),
        "DIFFIR_LOG_LEVEL": "warning",
        "DIFFIR_WARMUP_SIZE": "256",
        "DIFFIR_QUEUE_SIZE": "256",
        "DIFFIR_DEADLINE_S": "600",
        "DIFFIR_BACKEND": "torch",
    }
    return LiveServer(server_env(**{**defaults, **settings}), ready_timeout_s=180, stop_timeout_s=60)


def batch_sizes(srv: LiveServer) -> dict[str, float]:
    """Batch-size histogram (non-cumulative counts per bucket upper bound) from /metrics."""
    cumulative = {}
    for line in httpx.get(f"{srv.url}/metrics").text.splitlines():
        if line.startswith("diffir_batch_size_bucket"):
            le = line.split('le="')[1].split('"')[0]
            cumulative[le] = float(line.split()[-1])
    out, previous = {}, 0.0
    for le, count in cumulative.items():
        if count - previous:
            out[le] = count - previous
        previous = count
    return out


async def load(url: str, body: bytes, concurrency: int, total: int) -> dict:
    latencies: list[float] = []
    inference: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                r = await client.post(f"/restore/{TASK}?seed={i}", content=body, headers={"content-type": "image/png"})
                latencies.append(time.perf_counter() - t0)
                inference.append(server_timing(r.headers.get("server-timing", ""), "inference"))
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": total,
        "statuses": statuses,
        "requests_per_s": total / wall,
        "latency_min_s": min(latencies),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "latency_p99_s": percentile(latencies, 99),
        "overhead_ratios": [lat / inf - 1 for lat, inf in zip(latencies, inference)],
        "latencies_s": latencies,
        "inference_s": inference,
    }


def interleaved_throughput(ckpt: Path, size: int, levels: list[int], rounds: int) -> list[dict]:
    """Batching on (max 4) and off (1) in two servers, alternated level by level and round by round."""
    with contextlib.ExitStack() as servers:
        configs = {
            b: servers.enter_context(server(ckpt, DIFFIR_MAX_BATCH_SIZE=str(b), DIFFIR_MAX_WAIT_MS="5")) for b in (4, 1)
        }
        body = test_image(size)
        for srv in configs.values():
            asyncio.run(load(srv.url, body, 1, 2))  # connection and allocator warm-up
        blocks: dict[tuple[int, int], list[dict]] = {(b, c): [] for b in configs for c in levels}
        for r in range(rounds):
            for c in levels:
                order = [4, 1] if (r + c) % 2 == 0 else [1, 4]
                for max_batch in order:
                    srv = configs[max_batch]
                    before = batch_sizes(srv)
                    block = asyncio.run(load(srv.url, body, c, BLOCK_REQUESTS[c]))
                    after = batch_sizes(srv)
                    block["batch_sizes"] = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
                    block["round"] = r
                    blocks[(max_batch, c)].append(block)
                    log.info("batching max %d, concurrency %d, round %d: %.2f req/s", max_batch, c, r,
                             block["requests_per_s"])  # fmt: skip
    rows = []
    for (max_batch, c), runs in blocks.items():
        rates = [b["requests_per_s"] for b in runs]
        latencies = [x for b in runs for x in b["latencies_s"]]
        sizes: dict[str, float] = {}
        for b in runs:
            for k, v in b["batch_sizes"].items():
                sizes[k] = sizes.get(k, 0) + v
        rows.append(
            {
                "max_batch_size": max_batch,
                "concurrency": c,
                "rounds": len(runs),
                "requests": sum(b["requests"] for b in runs),
                "statuses": {str(k): sum(b["statuses"].get(k, 0) for b in runs) for k in {200, 503, 504, 500}},
                "requests_per_s_median": statistics.median(rates),
                "requests_per_s_min": min(rates),
                "requests_per_s_max": max(rates),
                "latency_min_s": min(latencies),
                "latency_p50_s_median_of_rounds": statistics.median(b["latency_p50_s"] for b in runs),
                "latency_p95_s": percentile(latencies, 95),
                "latency_p99_s": percentile(latencies, 99),
                "inference_median_s": statistics.median(x for b in runs for x in b["inference_s"]),
                "overhead_ratios": [x for b in runs for x in b["overhead_ratios"]],
                "batch_sizes": sizes,
            }
        )
    return rows


def peak_rss(ckpt: Path, size: int) -> dict:
    import psutil

    with server(ckpt, DIFFIR_WARMUP_SIZE="64") as srv:
        proc = psutil.Process(srv.proc.pid)
        baseline = proc.memory_info().rss
        peak, stop = baseline, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                try:
                    peak = max(peak, proc.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.02)

        body = test_image(size, quality=90)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        r = httpx.post(f"{srv.url}/restore/{TASK}", content=body, headers={"content-type": "image/jpeg"}, timeout=3600)
        elapsed = time.perf_counter() - t0
        stop.set()
        sampler.join(5)
        ok = r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (size, size)
    return {
        "size": size,
        "status": r.status_code,
        "output_ok": ok,
        "seconds": elapsed,
        "rss_before_mib": baseline / 2**20,
        "rss_peak_mib": peak / 2**20,
        "body_bytes": len(body),
    }


def markdown(report: dict) -> str:
    b = report["bare_model"]
    lines = [
        "# Service benchmark",
        "",
        f"Machine: {report['machine']}. Model: `{report['preset']}` ({report['weights']}), "
        f"{report['size']}² input, torch eager on CPU. Run: {report['started']} to {report['date']}, one "
        "`python -m bench.service_bench` run; every number below comes from it.",
        "",
        f"Bare model (`backend.run`, batch 1): min {b['min_s'] * 1000:.0f} ms, median {b['median_s'] * 1000:.0f} ms.",
    ]
    cells = ", ".join(
        f"batch {n}: min {v['min_s'] * 1000:.0f} / median {v['median_s'] * 1000:.0f} ms"
        for n, v in report["batch_cost"].items()
    )
    cost = report["batch_cost"]
    ratio = cost[max(cost, key=int)]["median_s"] / cost["1"]["median_s"]
    lines += [
        "",
        f"Model time per image, batch sizes alternated in one process: {cells} "
        f"(batch {max(cost, key=int)} costs {ratio:.2f}x the per-image time of batch 1).",
        "",
        f"Batching on and off, interleaved: two servers, {report['rounds']} rounds, each round runs every "
        "concurrency level against both back to back (order alternating). req/s: median of the rounds "
        "(min-max); p50: median of the rounds' p50; p95/p99 over all requests.",
        "",
        "| batching | concurrency | requests | req/s median (min-max) | min ms | p50 ms | p95 ms | p99 ms "
        "| batch sizes (≤ n: count) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(report["throughput"], key=lambda r: (r["concurrency"], -r["max_batch_size"]))
    for row in rows:
        sizes = ", ".join(f"≤{k}: {int(v)}" for k, v in row["batch_sizes"].items())
        lines.append(
            f"| {'on (max ' + str(row['max_batch_size']) + ')' if row['max_batch_size'] > 1 else 'off'} "
            f"| {row['concurrency']} | {row['requests']} | {row['requests_per_s_median']:.2f} "
            f"({row['requests_per_s_min']:.2f}-{row['requests_per_s_max']:.2f}) "
            f"| {row['latency_min_s'] * 1000:.0f} | {row['latency_p50_s_median_of_rounds'] * 1000:.0f} "
            f"| {row['latency_p95_s'] * 1000:.0f} | {row['latency_p99_s'] * 1000:.0f} | {sizes} |"
        )
    o = report["overhead"]
    lines += [
        "",
        "Service overhead at concurrency 1 (batching off, the CPU default): each request's client-side latency",
        "(HTTP, body read, decode, queue, encode, response) over the model time of the same request",
        f"(`Server-Timing: inference`): median {o['median_pct']:.1f} %, min {o['min_pct']:.1f} % over "
        f"{o['requests']} requests (median model time {o['inference_median_s'] * 1000:.0f} ms).",
    ]
    if report.get("rss"):
        r = report["rss"]
        lines += [
            "",
            f"Peak RSS restoring a {r['size']}² deblur input (JPEG, {r['body_bytes'] / 2**20:.1f} MiB, tiled): "
            f"{r['rss_peak_mib']:.0f} MiB (idle server {r['rss_before_mib']:.0f} MiB), {r['seconds']:.0f} s, "
            f"status {r['status']}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--quick", action="store_true", help="small numbers, for a smoke test")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of batching on/off")
    parser.add_argument("--rss-size", type=int, default=1280)
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    levels, reps, rounds = ([1, 4], 3, 1) if args.quick else ([1, 4, 8], 4, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, weights = checkpoint(Path(tmp))
        bare = bare_model(ckpt, args.size, reps)
        log.info("bare model: %s", bare)
        cost = batch_cost(ckpt, args.size, 2 if args.quick else 3)
        log.info("batch cost: %s", cost)
        rows = interleaved_throughput(ckpt, args.size, levels, rounds)
        c1 = next(r for r in rows if r["concurrency"] == 1 and r["max_batch_size"] == 1)
        ratios = c1["overhead_ratios"]
        overhead = {
            "inference_median_s": c1["inference_median_s"],
            "median_pct": 100 * statistics.median(ratios),
            "min_pct": 100 * min(ratios),
            "requests": len(ratios),
        }
        for row in rows:
            row.pop("overhead_ratios")
        rss = None if args.skip_rss else peak_rss(ckpt, 512 if args.quick else args.rss_size)
        if rss:
            log.info("rss: %s", rss)
    report = {
        "started": started,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the end",
        "preset": "deblur-small",
        "weights": weights,
        "size": args.size,
        "rounds": rounds,
        "bare_model": bare,
        "batch_cost": cost,
        "throughput": rows,
        "overhead": overhead,
        "rss": rss,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "service.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "service.md").write_text(markdown(report))
    log.info("wrote %s", args.out / "service.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
