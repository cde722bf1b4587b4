"""Training throughput, fp32 against bf16 autocast, on the deblur stage-2 recipe that continues the shipped model.

`python -m bench.train_speed [--out bench/results] [--threads 1] [--patch 96] [--batch 4] [--reps 5]
[--curve-steps 500] [--curve-patch 32] [--curve-batch 2]`.

Two measurements, each from one process with the variants interleaved, so the shared machine's load
falls on both alike:

* step rate: seconds per optimisation step (forward, backward, Adam) at the recipe's patch and batch,
  fp32 and bf16 alternating, `--reps` steps each after a warm-up step; median and min.
* loss: two copies of the same network from the same weights trained on the same seeded batches,
  one fp32 and one bf16, one step of each in turn; the L1 loss of every step, compared per window of
  steps (both see identical batches, so their difference is the precision's effect, and its spread
  over windows is the noise it is compared with).

The recipe is `training/configs/deblur-s2-noharm.toml` (teacher-free: the serving path is trained).
Results go whole to `<out>/train_speed.json` and `.md`, with the machine's CPU flags and load.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from bench.machine import cpu_flags
from models.tasks import get_task
from training.config import TrainConfig, apply_overrides, autocast_dtype, load_config_file
from training.datasets import PatchSchedule, Phase, UnpairedDataset, make_loader
from training.loop import build_degradation
from training.stage2 import Stage2Step

RECIPE = Path(__file__).resolve().parents[1] / "training" / "configs" / "deblur-s2-noharm.toml"
PRECISIONS = ("fp32", "bf16")
log = logging.getLogger("bench.train_speed")


def recipe(patch: int, batch: int, data: str = "") -> TrainConfig:
    cfg = TrainConfig(task="deblur", stage=2)
    values = load_config_file(RECIPE)
    if data:
        values["data"] = [data]
    cfg = apply_overrides(cfg, values, str(RECIPE))
    student = str(get_task("deblur").default_checkpoint_path())
    return apply_overrides(cfg, {"patches": [patch], "batches": [batch], "init_student": student}, "bench")


class Variant:
    """One network + optimiser trained at one precision."""

    def __init__(self, cfg: TrainConfig, precision: str, module: Stage2Step | None = None) -> None:
        self.cfg = apply_overrides(cfg, {"precision": precision}, "bench")
        self.precision = precision
        self.module = module if module is not None else Stage2Step(self.cfg, torch.device("cpu"))
        self.opt = torch.optim.Adam(self.module.net.parameters(), lr=self.cfg.lr, betas=self.cfg.betas)
        self.dtype = autocast_dtype(self.cfg, "cpu")

    def step(self, batch: dict[str, torch.Tensor], seed: int) -> tuple[float, float]:
        """One optimisation step; returns (seconds, loss)."""
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", dtype=self.dtype) if self.dtype else contextlib.nullcontext()
        with ctx:
            loss, _, _ = self.module(batch, torch.Generator().manual_seed(seed), False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.net.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return time.perf_counter() - t0, loss.item()


def batches(cfg: TrainConfig, n: int) -> list[dict[str, torch.Tensor]]:
    """n seeded training batches of the recipe (the same for every variant)."""
    patch, batch = cfg.patches[0], cfg.batches[0]
    ds = UnpairedDataset(cfg.data, build_degradation(cfg), seed=cfg.seed, augment=cfg.augment)
    loader = make_loader(ds, PatchSchedule([Phase(n, patch, batch)]), 0, n, workers=0)
    return [{k: v for k, v in b.items() if k in ("lq", "gt")} for b in loader]


def step_rate(cfg: TrainConfig, reps: int) -> dict:
    variants = {p: Variant(cfg, p) for p in PRECISIONS}
    data = batches(cfg, 1)[0]
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for p in PRECISIONS:  # warm-up: one-time allocations and kernel selection
        variants[p].step(data, 0)
    for i in range(reps):
        for p in PRECISIONS:
            dt, _ = variants[p].step(data, i + 1)
            times[p].append(dt)
            log.info("step rate %s rep %d: %.2f s", p, i, dt)
    out = {p: {"s_per_step_median": statistics.median(t), "s_per_step_min": min(t), "samples": t}
           for p, t in times.items()}  # fmt: skip
    out["bf16_speedup_median"] = out["fp32"]["s_per_step_median"] / out["bf16"]["s_per_step_median"]
    return out


def loss_curves(cfg: TrainConfig, steps: int, window: int) -> dict:
    base = Variant(cfg, "fp32")
    other = Variant(cfg, "bf16", module=copy.deepcopy(base.module))
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i, batch in enumerate(batches(cfg, steps)):
        for v in (base, other):
            _, loss = v.step(batch, i)
            losses[v.precision].append(loss)
        if (i + 1) % window == 0:
            log.info("loss step %d: fp32 %.4f bf16 %.4f", i + 1, losses["fp32"][-1], losses["bf16"][-1])
    n = len(losses["fp32"]) // window
    means = {p: [statistics.fmean(v[k * window : (k + 1) * window]) for k in range(n)] for p, v in losses.items()}
    diffs = [b - a for a, b in zip(means["fp32"], means["bf16"])]
    last = [b - a for a, b in zip(losses["fp32"][-window:], losses["bf16"][-window:])]
    return {
        "steps": steps,
        "window": window,
        "window_means": means,
        "bf16_minus_fp32_per_window": diffs,
        "last_window_mean_diff": statistics.fmean(last),
        "last_window_diff_sem": statistics.stdev(last) / len(last) ** 0.5 if len(last) > 1 else float("nan"),
        "last_window_fp32_loss_std": statistics.stdev(losses["fp32"][-window:]) if window > 1 else float("nan"),
    }


def markdown(r: dict) -> str:
    s = r["step_rate"]
    c = r["loss"]
    lines = [
        "# Training step rate: fp32 against bf16 autocast (deblur stage-2 recipe, one run)",
        "",
        f"Machine: {r['machine']}, CPU capability {r['cpu_capability']}, flags {', '.join(r['cpu_flags'])}; "
        f"torch {r['torch']}, {r['threads']} thread(s); load average {r['load_average_start'][0]:.1f} at the "
        f"start, {r['load_average_end'][0]:.1f} at the end (a shared machine: compare the variants, which ran "
        "interleaved, not absolute times).",
        "",
        f"Step rate at patch {s['patch']} x batch {s['batch']} (the recipe trains at {r['recipe_patch']} x "
        f"{r['recipe_batch']}), {s['reps']} interleaved steps each:",
        "",
        "| precision | s/step median | s/step min |",
        "|---|---|---|",
    ]
    for p in PRECISIONS:
        lines.append(f"| {p} | {s[p]['s_per_step_median']:.2f} | {s[p]['s_per_step_min']:.2f} |")
    lines += [
        "",
        f"bf16 / fp32 speed: x{s['bf16_speedup_median']:.2f} (median)."
        + (
            " This CPU has no bf16 units (no avx512_bf16 / amx flags): bf16 convolutions fall back to slow "
            'reference kernels, so train in fp32 here; `precision = "bf16"` is for GPUs and bf16-capable CPUs.'
            if not any(f in r["cpu_flags"] for f in ("avx512_bf16", "amx_bf16"))
            else ""
        ),
        "",
        f"Loss over {c['steps']} steps at patch {c['patch']} x batch {c['batch']} (a small patch so that both "
        f"curves fit one run on this CPU), same weights and batches, means per {c['window']} steps"
        + (
            f" (fewer than the 500 steps of a full check: bf16 steps are x{1 / s['bf16_speedup_median']:.1f} slower "
            "here)"
            if c["steps"] < 500 and s["bf16_speedup_median"] < 1
            else ""
        )
        + ":",
        "",
        "| steps | fp32 L1 | bf16 L1 | bf16 - fp32 |",
        "|---|---|---|---|",
    ]
    for k, (a, b) in enumerate(zip(c["window_means"]["fp32"], c["window_means"]["bf16"])):
        lines.append(f"| {k * c['window'] + 1}-{(k + 1) * c['window']} | {a:.4f} | {b:.4f} | {b - a:+.5f} |")
    lines += [
        "",
        f"Last window: bf16 - fp32 = {c['last_window_mean_diff']:+.5f} +- {c['last_window_diff_sem']:.5f} "
        f"(standard error), against a step-to-step loss spread of {c['last_window_fp32_loss_std']:.4f}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--curve-steps", type=int, default=500)
    parser.add_argument("--curve-patch", type=int, default=32)
    parser.add_argument("--curve-batch", type=int, default=2)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--data", default="", help="training images (default: the recipe's)")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from an existing .json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.markdown_only:
        res = json.loads((Path(args.out) / "train_speed.json").read_text())
        (Path(args.out) / "train_speed.md").write_text(markdown(res))
        return 0
    torch.set_num_threads(args.threads)
    result: dict = {
        "recipe": str(RECIPE.relative_to(RECIPE.parents[2])),
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_flags(),
        "load_average_start": os.getloadavg(),
    }
    values = load_config_file(RECIPE)
    result["recipe_patch"], result["recipe_batch"] = values["patches"][0], values["batches"][0]
    rate = step_rate(recipe(args.patch, args.batch, args.data), args.reps)
    result["step_rate"] = {"patch": args.patch, "batch": args.batch, "reps": args.reps, **rate}
    window = min(args.window, args.curve_steps)
    curve = loss_curves(recipe(args.curve_patch, args.curve_batch, args.data), args.curve_steps, window)
    result["loss"] = {"patch": args.curve_patch, "batch": args.curve_batch, **curve}
    result["load_average_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "train_speed.md").write_text(markdown(result))
    log.info("%s", markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
