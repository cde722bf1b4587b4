"""Two checkpoints of one task timed against each other: did a new release get slower?

`python -m bench.compare_speed OLD NEW [--sizes 256 512] [--reps 5] [--threads 2] [--out bench/results]`.

Eager fp32 on the service's tuning input (`service.runtime.loader.tuning_input`; for inpainting, a
centred hole a quarter of the image), both checkpoints in ONE process, alternating per repetition so a
shared machine's background load hits them alike; min and median per image. Compare two releases
here, not across runs of `bench.speed`. Results: `<out>/compare_speed.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from models import load_model
from service.runtime.loader import tuning_input


def compare(paths: list[str], sizes: list[int], reps: int) -> list[dict]:
    nets = {p: load_model(p) for p in paths}
    if len({n.config.kind for n in nets.values()}) != 1:
        raise SystemExit("the checkpoints are of different tasks")
    rows = []
    for side in sizes:
        lq, noise = tuning_input(next(iter(nets.values())).config, side)
        times: dict[str, list[float]] = {p: [] for p in nets}
        with torch.inference_mode():
            for net in nets.values():
                net(lq, noise=noise)  # warm-up
            for _ in range(reps):
                for p, net in nets.items():
                    started = time.perf_counter()
                    net(lq, noise=noise)
                    times[p].append(time.perf_counter() - started)
        for p, t in times.items():
            rows.append({"checkpoint": p, "side": side, "min_s": min(t), "median_s": statistics.median(t)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="output edges")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shown = sys.argv[1:] if argv is None else argv
    result = {
        "command": " ".join(["python -m bench.compare_speed", *shown]),
        "threads": args.threads,
        "loadavg_before": list(os.getloadavg()),
        "rows": compare(args.checkpoints, args.sizes, args.reps),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Two checkpoints timed in one process",
        "",
        f"`{result['command']}`; eager fp32, {args.threads} threads, min / median of {args.reps} per image.",
        "",
        "| checkpoint | output | min s | median s |",
        "|---|---|---|---|",
        *(f"| {r['checkpoint']} | {r['side']}² | {r['min_s']:.3f} | {r['median_s']:.3f} |" for r in result["rows"]),
    ]
    (args.out / "compare_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
