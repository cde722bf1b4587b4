"""Speed of the default path (`make bench`) -> bench/results/speed-default.{json,md}.

For every shipped task, every candidate `DIFFIR_BACKEND=auto` considers on this machine (plus
TorchScript, for comparison) is timed at each output size, in ONE process, round-robin per
repetition so the shared machine's background load hits them alike; min and median per image,
PSNR of the output against fp32 eager, achieved GFLOP/s and its share of this machine's
measured matmul peak. Then what `auto` picks (the same tuner the service runs at start-up),
the official `deblur` preset at 256² (random weights: the size users would train), and a large
image restored tile by tile through the service's engine with the chosen backend.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.reference_ops import reference_forward
from models import DiffIRS2, get_preset, load_model
from models.tasks import TASKS

log = logging.getLogger("bench.speed")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def machine_peak(threads: int, n: int = 2048, reps: int = 3) -> dict[str, float]:
    """Best-of-`reps` dense matmul GFLOP/s in fp32 (and bf16 where the CPU has bf16 units)."""
    from service.runtime.loader import low_precisions

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and "bf16" not in low_precisions(torch.device("cpu")):
            continue
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        peaks[name] = 2 * n**3 / min(_timed(lambda a=a, b=b: a @ b) for _ in range(reps)) / 1e9
    return peaks


def count_flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    from service.runtime.autotune import psnr_db

    return psnr_db(out, ref)


def _candidates(checkpoint: Path, cache: Path, threads: int, torchscript: bool = True):
    """What the service's `auto` times on this machine (`--skip-torchscript` leaves TorchScript out)."""
    from service.runtime.loader import auto_candidates
    from service.settings import Settings, TaskSettings

    settings = Settings(backend="auto", cache_dir=cache, torch_threads=threads)
    spec = TaskSettings(checkpoint=checkpoint)
    found = auto_candidates(checkpoint, spec, settings, torch.device("cpu"))
    return [c for c in found if torchscript or c.backend != "torchscript"], settings


def bench_task(
    task_name: str, sides: list[int], reps: int, cache: Path, threads: int, peak: float, torchscript: bool = True
) -> dict:
    from service.runtime.autotune import tune
    from service.runtime.loader import tuning_input

    task = TASKS[task_name]
    checkpoint = task.default_checkpoint_path()
    assert checkpoint is not None
    net = load_model(checkpoint).eval()
    candidates, settings = _candidates(checkpoint, cache, threads, torchscript)
    backends = {}
    for cand in candidates:
        started = time.perf_counter()
        try:
            backends[cand.label] = (cand, cand.build())
        except Exception as exc:
            log.warning("%s %s unavailable: %s", task_name, cand.label, exc)
            continue
        log.info("%s %s built in %.1f s", task_name, cand.label, time.perf_counter() - started)
    rows = []
    for side in sides:
        lq, noise = tuning_input(net.config, side)
        with torch.inference_mode():
            flops = count_flops(lambda lq=lq, noise=noise: net(lq, noise=noise))
        outputs = {label: b.run(lq, noise) for label, (_, b) in backends.items()}  # warm-up
        ref = outputs["torch-fp32"]
        times: dict[str, list[float]] = {label: [] for label in backends}
        for _ in range(reps):
            for label, (_, b) in backends.items():
                times[label].append(_timed(lambda b=b, lq=lq, noise=noise: b.run(lq, noise)))
        base = statistics.median(times["torch-fp32"])
        for label, (cand, _) in backends.items():
            t = times[label]
            row = {
                "task": task_name,
                "preset": net.config.name,
                "candidate": label,
                "backend": cand.backend,
                "precision": cand.precision,
                "output": side,
                "input": list(lq.shape[-2:]),
                "min_s": min(t),
                "median_s": statistics.median(t),
                "reps": len(t),
                "speedup_vs_fp32_eager_median": base / statistics.median(t),
                "psnr_vs_fp32_db": psnr(outputs[label], ref),
                "gflop": flops / 1e9,
                "gflops_min": flops / min(t) / 1e9,
            }
            row["fraction_of_peak"] = row["gflops_min"] / peak
            rows.append(row)
            log.info(
                "%s %4d² %-18s min %.3f med %.3f x%.2f %.1f dB",
                task_name, side, label, row["min_s"], row["median_s"],
                row["speedup_vs_fp32_eager_median"], row["psnr_vs_fp32_db"],
            )  # fmt: skip
    del backends
    _, tuning = tune(candidates, tuning_input(net.config, settings.autotune_size))
    return {"rows": rows, "auto": tuning.as_dict()}


def build_random(variant: str, seed: int = 0) -> DiffIRS2:
    """A preset with random weights whose norms/temperatures are not trivial (every parameter matters)."""
    torch.manual_seed(seed)
    net = DiffIRS2(get_preset(variant)).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("body.weight", "temperature")):
                p.uniform_(0.5, 1.5)
    return net


def bench_official_preset(side: int, reps: int, cache: Path, threads: int, peak: float) -> list[dict]:
    """The official `deblur` preset at `side`², batch 1: upstream op sequence, ours eager, ONNX Runtime."""
    from models import save_checkpoint
    from service.runtime.loader import _exported
    from service.settings import Settings, TaskSettings

    net = build_random("deblur")
    checkpoint = save_checkpoint(net, cache / "official-deblur-random")
    onnx = _exported(checkpoint, TaskSettings(checkpoint=checkpoint), "onnxruntime",
                     Settings(cache_dir=cache, torch_threads=threads), torch.device("cpu"))  # fmt: skip
    lq = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(side))
    z = torch.randn(1, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        flops = count_flops(lambda: net(lq, noise=z))
        runners = {
            "official-style eager": lambda: reference_forward(net, lq, z),
            "torch-fp32": lambda: net(lq, noise=z),
            "onnxruntime-fp32": lambda: onnx.run(lq, z),
        }
        ref = runners["official-style eager"]()
        outs = {k: f() for k, f in runners.items()}
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(reps):
            for k, f in runners.items():
                times[k].append(_timed(f))
    rows = []
    for k, t in times.items():
        rows.append(
            {
                "candidate": k,
                "output": side,
                "min_s": min(t),
                "median_s": statistics.median(t),
                "psnr_vs_fp32_db": psnr(outs[k], ref),
                "gflop": flops / 1e9,
                "gflops_min": flops / min(t) / 1e9,
                "fraction_of_peak": flops / min(t) / 1e9 / peak,
            }
        )
        log.info("official deblur %d² %-22s min %.3f med %.3f", side, k, min(t), statistics.median(t))
    return rows


def bench_large(side: int, tiles: list[int], cache: Path, threads: int, labels: list[str]) -> list[dict]:
    """One `side`² deblur through the engine (tiles, global IPR) per backend and tile size, round-robin."""
    from service.runtime.loader import tuning_input
    from service.scheduling.engine import Engine, EngineLimits, Job

    checkpoint = TASKS["deblur"].default_checkpoint_path()
    assert checkpoint is not None
    candidates, _ = _candidates(checkpoint, cache, threads, torchscript=False)
    backends = {c.label: c.build() for c in candidates if c.label in labels}
    image = tuning_input(load_model(checkpoint).config, side)[0]
    rows = []
    for tile in tiles:
        for label, backend in backends.items():
            engine = Engine("deblur", backend, EngineLimits(tile, 32, 1024 * 1024, 0))
            seconds = _timed(lambda engine=engine: engine.run_batch([Job(image, None, seed=0)]))
            rows.append({"task": "deblur", "candidate": label, "side": side, "tile": tile, "seconds": seconds})
            log.info("large %d² %s tile %d: %.1f s", side, label, tile, seconds)
    return rows


def _jsonable(value: Any) -> Any:
    """JSON has no infinity: an exact match (PSNR inf) is written as "inf"."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _db(value: Any) -> str:
    return "exact" if value in ("inf", math.inf) else f"{float(value):.1f} dB"


def _commit() -> str:
    """The short commit hash of the code measured (with "+changes" when the tree differs from it)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(  # the results files this command rewrites do not count
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"],
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _md(report: dict[str, Any]) -> str:
    meta = report["meta"]
    peak = meta["peak_gflops"]
    lines = [
        "# Speed of the default path",
        "",
        f"Measured {meta['date']} by `{meta['command']}` at commit {meta['commit']}, {meta['threads']} threads, on "
        f"{meta['machine']['cpu']} ({meta['machine']['cores']} cores, ISA: {', '.join(meta['machine']['isa'])}), "
        f"torch {meta['torch']}, onnxruntime {meta['onnxruntime']}. Matmul peak measured here: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items())
        + f". Load average before / after: {meta['loadavg_before'][0]:.1f} / {meta['loadavg_after'][0]:.1f} "
        "(the machine is shared; variants run round-robin in one process, min is the least disturbed run).",
        "",
        "## What `DIFFIR_BACKEND=auto` picks here",
        "",
        "| task | chosen | tuning input | candidates (min s on it, dB vs fp32) |",
        "|---|---|---|---|",
    ]
    for task, entry in report["tasks"].items():
        auto = entry["auto"]
        cands = "; ".join(
            f"{t['label']} {t['seconds']:.3f} s, {_db(t['psnr_db'])}" + ("" if t["accepted"] else " (rejected)")
            if t["seconds"] is not None
            else f"{t['label']}: {t['note']}"
            for t in auto["trials"]
        )
        lines.append(f"| {task} | **{auto['chosen']}** | {auto['input_size'][0]}² | {cands} |")
    lines += [
        "",
        "## Every candidate, shipped models (per image, batch 1)",
        "",
        "| task | output | candidate | min s | median s | vs fp32 eager (median) | PSNR vs fp32 | GFLOP "
        "| GFLOP/s (min) | of fp32 peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["tasks"].values():
        for r in entry["rows"]:
            db = _db(r["psnr_vs_fp32_db"])
            lines.append(
                f"| {r['task']} | {r['output']}² | {r['candidate']} | {r['min_s']:.3f} | {r['median_s']:.3f} | "
                f"{r['speedup_vs_fp32_eager_median']:.2f}× | {db} | {r['gflop']:.1f} | {r['gflops_min']:.0f} | "
                f"{r['fraction_of_peak']:.0%} |"
            )
    if report.get("official"):
        lines += [
            "",
            "## Official `deblur` preset, 256², batch 1 (random weights)",
            "",
            "| path | min s | median s | PSNR vs official-style | GFLOP/s (min) | of fp32 peak |",
            "|---|---|---|---|---|---|",
        ]
        for r in report["official"]:
            db = _db(r["psnr_vs_fp32_db"])
            lines.append(
                f"| {r['candidate']} | {r['min_s']:.3f} | {r['median_s']:.3f} | {db} | {r['gflops_min']:.0f} | "
                f"{r['fraction_of_peak']:.0%} |"
            )
    if report.get("large"):
        lines += ["", "## A large deblur through the engine (tiles + the windowed global IPR)", "",
                  "| input | backend | tile | seconds |", "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['side']}² | {r['candidate']} | {r['tile']} | {r['seconds']:.1f} |" for r in report["large"]]
        best = min(report["large"], key=lambda r: r["seconds"])
        lines += ["", f"Fastest tile edge here: {best['tile']} ({best['candidate']}, {best['seconds']:.1f} s); "
                  "time grows with the pixel count (one tile after another)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--sizes", default="256,512", help="output edges")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--official-side", type=int, default=256, help="0 skips the official preset")
    parser.add_argument("--large-side", type=int, default=2048, help="a tiled deblur of this size (0 skips it)")
    parser.add_argument("--tiles", default="256,384,512", help="tile edges to time the large deblur with")
    parser.add_argument("--skip-torchscript", action="store_true", help="leave TorchScript out (slow to trace)")
    parser.add_argument("--cache", type=Path, help="cache folder for exports (default: the service's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    import onnxruntime

    from service.runtime.devices import cpu_fingerprint

    before = os.getloadavg()
    peak = machine_peak(args.threads)
    report: dict[str, Any] = {"tasks": {}}
    from service.runtime.cache import cache_root

    cache = cache_root(args.cache)
    for task in args.tasks.split(","):
        sides = [int(s) for s in args.sizes.split(",")]
        report["tasks"][task] = bench_task(
            task, sides, args.reps, cache, args.threads, peak["fp32"], not args.skip_torchscript
        )
    if args.official_side:
        report["official"] = bench_official_preset(args.official_side, args.reps, cache, args.threads, peak["fp32"])
    if args.large_side and "deblur" in report["tasks"]:
        labels = sorted({"torch-fp32", report["tasks"]["deblur"]["auto"]["chosen"]})
        tiles = [int(t) for t in args.tiles.split(",")]
        report["large"] = bench_large(args.large_side, tiles, cache, args.threads, labels)
    report["meta"] = {
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": cpu_fingerprint(),
        "peak_gflops": peak,
        "loadavg_before": before,
        "loadavg_after": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python -m bench.speed", *(sys.argv[1:] if argv is None else argv)]),
        "commit": _commit(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed-default.json").write_text(json.dumps(_jsonable(report), indent=2, default=str) + "\n")
    (args.out / "speed-default.md").write_text(_md(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
