"""What the tile edge costs and buys: quality and speed of the service's tiled restoration per tile size.

`python -m bench.tile_size CHECKPOINT [--tiles 256 384 512] [--precision fp32] [--reps 3] [--side 2048]
[--threads 2] [--data data] [--out bench/results]`; CHECKPOINT is a deblurring or an inpainting one.

Large inputs are restored tile by tile under one whole-image IPR (`service.scheduling.tiling`). A tile pools the
channel attention's statistics over less of the image, so a smaller tile could restore worse, while on
a CPU it runs faster per pixel (its activations stay in cache). Both sides, measured through the
service's own `Engine` with its default overlap:

- quality: the evaluation's whole images, each restored untiled and with every tile edge (tiling
  forced on); mean PSNR against the ground truth and of each tiled output against the untiled one.
  Deblurring: Kodak24 + Levin kernels and GoPro. Inpainting: the Places2 photos with their holes
  (the 256² faces fit in one tile, where tiled and untiled are the same pass), where a tile sees only
  part of a hole's context;
- speed (deblurring): one `--side`² input (a GoPro frame resized), every tile edge timed in ONE
  process, alternating per repetition so background load hits them alike; min and median.

Results: `<out>/tile_size-<task>-<precision>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.speed import _commit, _jsonable
from service.runtime.torch_backend import TorchBackend
from service.scheduling.engine import Engine, EngineLimits, Job
from service.settings import Settings
from training.data import DATA_ROOT
from training.evaluate import Case, deblur_cases, inpaint_cases
from training.metrics import psnr

log = logging.getLogger("bench.tile_size")

UNTILED = 0
"""The row key for the whole image in one pass."""


def engine_for(backend: TorchBackend, tile: int) -> Engine:
    """The service's engine with its default overlap; `tile` 0 never tiles, any other edge always does."""
    defaults = Settings()
    limits = EngineLimits(
        tile_size=tile or defaults.tile_size,
        tile_overlap=defaults.tile_overlap,
        tile_threshold_pixels=2**62 if tile == UNTILED else 1,
        bucket_multiple=0,
    )
    return Engine("bench", backend, limits)


def batched(x: torch.Tensor | None) -> torch.Tensor | None:
    return x[None] if x is not None and x.dim() == 3 else x


def restore(engine: Engine, image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return engine.run_batch([Job(image=batched(image), mask=batched(mask), seed=0)])[0][0]  # type: ignore[arg-type]


def cases(kind: str, data: Path) -> list[Case]:
    if kind == "deblur":
        return list(deblur_cases(data))
    return [c for c in inpaint_cases(data) if c.set_name == "places2"]


def quality(backend: TorchBackend, tiles: list[int], measured: list[Case]) -> list[dict]:
    engines = {t: engine_for(backend, t) for t in [UNTILED, *tiles]}
    rows = []
    for case in measured:
        out = {t: restore(e, case.lq, case.mask) for t, e in engines.items()}
        row = {"set": case.set_name, "name": case.name, "size": list(case.gt.shape[-2:])}
        row.update({f"psnr_{t}": psnr(o, case.gt) for t, o in out.items()})
        row.update({f"vs_untiled_{t}": psnr(out[t], out[UNTILED]) for t in tiles})
        rows.append(row)
        log.info("%s/%s: %s", case.set_name, case.name, " ".join(f"{t or 'whole'} {row[f'psnr_{t}']:.2f}" for t in out))
    return rows


def large_input(measured: list[Case], side: int) -> torch.Tensor:
    case = next(c for c in measured if c.set_name == "GoPro")
    return F.interpolate(batched(case.lq), size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)


def speed(backend: TorchBackend, tiles: list[int], image: torch.Tensor, reps: int) -> dict[int, list[float]]:
    engines = {t: engine_for(backend, t) for t in tiles}
    for e in engines.values():
        restore(e, image[..., :256, :256])  # warm-up
    times: dict[int, list[float]] = {t: [] for t in tiles}
    for _ in range(reps):
        for t, e in engines.items():
            started = time.perf_counter()
            restore(e, image)
            times[t].append(time.perf_counter() - started)
    return times


def summarise(rows: list[dict], tiles: list[int], times: dict[int, list[float]]) -> list[dict]:
    table = []
    for t in [UNTILED, *tiles]:
        entry: dict = {"tile": t, "psnr": statistics.mean(r[f"psnr_{t}"] for r in rows)}
        if t != UNTILED:
            entry["gain_vs_untiled"] = entry["psnr"] - table[0]["psnr"]
            entry["worst_gain_vs_untiled"] = min(r[f"psnr_{t}"] - r[f"psnr_{UNTILED}"] for r in rows)
            entry["psnr_vs_untiled_output"] = statistics.mean(r[f"vs_untiled_{t}"] for r in rows)
            if times:
                entry["min_s"], entry["median_s"] = min(times[t]), statistics.median(times[t])
        table.append(entry)
    return table


SETS = {"deblur": "the deblurring evaluation (Kodak24 + Levin, GoPro)", "inpaint": "Places2 with their holes"}


def markdown(result: dict) -> str:
    side, timed = result["speed_side"], bool(result["times"])
    speed_text = ""
    if timed:
        speed_text = f" Speed: one {side}x{side} input, min / median of {result['reps']}, all edges in one process."
    lines = [
        f"# Tile edge: quality{' and speed' if timed else ''} of tiled {result['task']}",
        "",
        f"`{result['command']}` at commit `{result['commit']}`; {result['precision']}, {result['threads']} threads,"
        f" overlap {result['overlap']} px. Quality: {result['images']} whole images of {SETS[result['task']]},"
        f" tiling forced on.{speed_text}",
        "",
        "| tile | PSNR (dB) | vs untiled, mean / worst (dB) | PSNR to the untiled output (dB) |"
        + (f" {side}² min s | {side}² median s |" if timed else ""),
        "|---|---|---|---|" + ("---|---|" if timed else ""),
    ]
    for e in result["table"]:
        if e["tile"] == UNTILED:
            lines.append(f"| untiled | {e['psnr']:.2f} | | |" + (" | |" if timed else ""))
            continue
        line = (
            f"| {e['tile']} | {e['psnr']:.2f} | {e['gain_vs_untiled']:+.3f} / {e['worst_gain_vs_untiled']:+.3f}"
            f" | {e['psnr_vs_untiled_output']:.1f} |"
        )
        lines.append(line + (f" {e['min_s']:.2f} | {e['median_s']:.2f} |" if timed else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tile_size", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a deblurring or an inpainting checkpoint")
    parser.add_argument("--tiles", type=int, nargs="+", default=[256, 384, 512])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--side", type=int, default=2048, help="edge of the timed deblurring input; 0: no timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA_ROOT, help="the data root (`make data` fills it)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    backend = TorchBackend(args.checkpoint, None, torch.device("cpu"), args.precision)
    task = backend.net.config.kind
    if task not in SETS:
        raise SystemExit(f"bench.tile_size measures a deblurring or an inpainting checkpoint, not {task}")
    measured = cases(task, args.data)
    rows = quality(backend, args.tiles, measured)
    timed = task == "deblur" and args.side > 0
    times = speed(backend, args.tiles, large_input(measured, args.side), args.reps) if timed else {}
    shown = sys.argv[1:] if argv is None else argv
    result = {
        "command": " ".join(["python -m bench.tile_size", *map(str, shown)]),
        "commit": _commit(),
        "task": task,
        "precision": args.precision,
        "threads": args.threads,
        "overlap": Settings().tile_overlap,
        "reps": args.reps,
        "speed_side": args.side,
        "images": len(rows),
        "loadavg_before": list(os.getloadavg()),
        "table": summarise(rows, args.tiles, times),
        "rows": rows,
        "times": {str(t): v for t, v in times.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"tile_size-{task}-{args.precision}"
    (args.out / f"{name}.json").write_text(json.dumps(_jsonable(result), indent=2) + "\n")
    text = markdown(result)
    (args.out / f"{name}.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
