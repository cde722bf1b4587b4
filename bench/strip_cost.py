"""Time and peak memory of thin and strip-shaped inputs against a square of the same pixel count.

For every task, each shape is restored the way the service would (`Engine.run_batch`, tiled when its
cost says so) in a fresh process, on the shipped checkpoint, and timed; its memory is the growth of
the process's peak RSS over what loading and a warm-up took; time is counted in CPU seconds (robust
on a shared machine) beside wall seconds. Shapes the service refuses up front
(`service.scheduling.cost.shape_refusal`) are marked refused and measured anyway, to show what admitting
them would cost (`--skip-refused` leaves them out).

    python -m bench.strip_cost --out bench/results   # -> strip_cost.json, strip_cost.md
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import cpu_flags

log = logging.getLogger("bench.strip_cost")

# task -> [(pixel count, [shapes])]: the square of that count, strips both ways, thin bands.
PLAN: dict[str, list[tuple[str, list[tuple[int, int]]]]] = {
    "deblur": [
        ("whole", [(512, 512), (1, 262144), (262144, 1), (2, 131072), (4, 65536), (8, 32768), (32768, 8), (16, 16384)]),
        ("tiled", [(1040, 1040), (8, 135200), (135200, 8), (4, 270400)]),
    ],
    "sr-x4": [
        ("whole", [(128, 128), (1, 16384), (16384, 1), (2, 8192), (4, 4096), (8, 2048), (2048, 8), (16, 1024)]),
        ("tiled", [(300, 300), (8, 11250), (11250, 8)]),
    ],
    "inpaint": [
        ("whole", [(512, 512), (1, 262144), (4, 65536), (8, 32768), (32768, 8)]),
    ],
}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_one(task: str, h: int, w: int, skip_refused: bool) -> dict:
    """Restore one h x w input of `task` in this process; returns wall and CPU seconds, peak-RSS growth."""
    import torch

    from models.tasks import TASKS
    from service.runtime.torch_backend import TorchBackend
    from service.scheduling.cost import shape_refusal
    from service.scheduling.engine import Engine, EngineLimits, Job
    from service.settings import Settings

    s = Settings()
    backend = TorchBackend(TASKS[task].default_checkpoint_path(), None, torch.device("cpu"))  # type: ignore[arg-type]
    limits = EngineLimits(s.tile_size, s.tile_overlap, s.tile_threshold_pixels, s.bucket_multiple, s.prior_max_pixels)
    engine = Engine(task, backend, limits)
    work = engine.work(h, w)
    row = {
        "task": task,
        "shape": f"{h}x{w}",
        "pixels": h * w,
        "cost": work.cost,
        "shape_factor": round(work.shape_factor, 3),
        "tiled": engine.tiles(h, w),
        "refused": shape_refusal(work) is not None,
    }
    if row["refused"] and skip_refused:
        return row

    def job(hh: int, ww: int) -> Job:
        g = torch.Generator().manual_seed(0)
        image = torch.rand((1, 3, hh, ww), generator=g)
        mask = (torch.rand((1, 1, hh, ww), generator=g) > 0.8).float() if backend.info.needs_mask else None
        return Job(image, mask, seed=0)

    engine.run_batch([job(16, 16)])  # warm-up: kernels, allocator
    small = job(h, w)
    before = _peak_mb()
    started, cpu_started = time.perf_counter(), time.process_time()
    (out,) = engine.run_batch([small])
    row["seconds"] = round(time.perf_counter() - started, 3)
    row["cpu_seconds"] = round(time.process_time() - cpu_started, 3)
    row["peak_rss_growth_mb"] = round(_peak_mb() - before, 1)
    assert isinstance(out, torch.Tensor)
    return row


def run_plan(tasks: list[str], skip_refused: bool) -> list[dict]:
    rows = []
    for task in tasks:
        for regime, shapes in PLAN[task]:
            square: dict | None = None
            for h, w in shapes:
                cmd = [sys.executable, "-m", "bench.strip_cost", "--one", task, str(h), str(w)]
                if skip_refused:
                    cmd.append("--skip-refused")
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row["regime"] = regime
                if square is None:
                    square = row
                elif "seconds" in row:
                    row["time_vs_square"] = round(row["cpu_seconds"] / square["cpu_seconds"], 2)
                    row["memory_vs_square"] = round(
                        max(row["peak_rss_growth_mb"], 1.0) / max(square["peak_rss_growth_mb"], 1.0), 2
                    )
                rows.append(row)
                log.info("%s", json.dumps(row))
    return rows


def markdown(rows: list[dict], machine: dict) -> str:
    lines = [
        "# Strip and thin-band inputs against the square of the same pixel count",
        "",
        f"Machine: {machine['cpu']} ({machine['threads']} threads, flags: {machine['flags']}); "
        f"torch {machine['torch']}, fp32 eager, shipped checkpoints. Each shape in a fresh process; memory is "
        "the growth of peak RSS over loading and a warm-up; time is the process's CPU time (all threads), which "
        "a busy shared machine disturbs far less than wall time (both are in the JSON). `factor`: the shape's "
        "padded work over the "
        "square's (`Work.shape_factor`). Refused shapes get 422 `shape_too_costly` at admission"
        + (" (not run here)." if machine["skip_refused"] else " (measured anyway, to show why)."),
        "",
        "| task | regime | shape | pixels | factor | tiled | refused | CPU s | × square | peak RSS +MB | × square |",
        "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['regime']} | {r['shape']} | {r['pixels']} | {r['shape_factor']} | "
            f"{'yes' if r['tiled'] else 'no'} | {'**yes**' if r['refused'] else 'no'} | {r.get('cpu_seconds', '–')} | "
            f"{r.get('time_vs_square', '–')} | {r.get('peak_rss_growth_mb', '–')} | {r.get('memory_vs_square', '–')} |"
        )
    return "\n".join(lines) + "\n"


def _machine(skip_refused: bool) -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "flags": " ".join(cpu_flags()) or "none",
        "torch": torch.__version__,
        "skip_refused": skip_refused,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--tasks", nargs="+", default=list(PLAN), choices=list(PLAN))
    parser.add_argument("--skip-refused", action="store_true", help="do not run the shapes the service refuses")
    parser.add_argument("--one", nargs=3, metavar=("TASK", "H", "W"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.one:
        task, h, w = args.one
        print(json.dumps(measure_one(task, int(h), int(w), args.skip_refused)))
        return
    rows = run_plan(args.tasks, args.skip_refused)
    machine = _machine(args.skip_refused)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "strip_cost"
    (args.out / f"{name}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(rows, machine))


if __name__ == "__main__":
    main()
