"""Training-throughput benchmark (issue 3): images/s of a small preset's training step at 64x64 and
128x128 patches, and the data pipeline's samples/s and step-waiting share with 0 and 2 workers.

`python -m bench.train_speed [--out bench/results] [--steps N] [--threads T]`. The machine is
shared, so every number is a median over repetitions and the load average is recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from training.config import TrainConfig
from training.datasets import PatchSchedule, Phase, UnpairedDataset, make_loader
from training.degradations import SHARED_DATA, make_degradation
from training.stage1 import Stage1Step
from training.stage2 import Stage2Step


def step_speed(task: str, stage: int, patch: int, batch: int, steps: int, tmp: Path) -> dict:
    """Median seconds of one optimisation step on random tensors (no data loading)."""
    cfg = TrainConfig(task=task, stage=stage, out=str(tmp / task), patches=(patch,), batches=(batch,))
    if stage == 2:
        from models import DiffIRS1, save_checkpoint

        save_checkpoint(DiffIRS1(cfg.model_config()), tmp / task / "s1" / "model_latest.safetensors")
    mod = Stage1Step(cfg, torch.device("cpu")) if stage == 1 else Stage2Step(cfg, torch.device("cpu"))
    opt = torch.optim.Adam(mod.net.parameters(), lr=1e-4)
    mc = cfg.model_config()
    g = torch.Generator().manual_seed(0)
    lq = torch.rand((batch, mc.image_channels, patch // mc.scale, patch // mc.scale), generator=g)
    batch_d = {"lq": lq, "gt": torch.rand((batch, 3, patch, patch), generator=g)}
    if mc.kind == "inpaint":
        batch_d["mask"] = lq[:, 3:]
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss, _, _ = mod(batch_d, torch.Generator().manual_seed(i), False)
        loss.backward()
        opt.step()
        if i:  # the first step pays one-time allocation costs
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "task": task,
        "stage": stage,
        "patch": patch,
        "batch": batch,
        "s_per_step": med,
        "images_per_s": batch / med,
    }


def loader_speed(task: str, patch: int, batch: int, workers: int, steps: int) -> dict:
    spec_deg = {"deblur": "motion-blur", "sr-x4": "bicubic", "inpaint": "lama-masks"}[task]
    scale = 4 if task == "sr-x4" else 1
    ds = UnpairedDataset([SHARED_DATA / "train"], make_degradation(spec_deg, scale), seed=0)
    loader = make_loader(ds, PatchSchedule([Phase(steps, patch, batch)]), 0, steps, workers=workers)
    t0 = time.perf_counter()
    n = sum(b["gt"].shape[0] for b in loader)
    dt = time.perf_counter() - t0
    return {"task": task, "patch": patch, "batch": batch, "workers": workers, "samples_per_s": n / dt}


def waiting_share(task: str, patch: int, batch: int, workers: int, steps: int, step_s: float) -> float:
    """Share of a simulated training loop (sleep = one model step) spent waiting for the loader."""
    spec_deg = {"deblur": "motion-blur", "sr-x4": "bicubic", "inpaint": "lama-masks"}[task]
    ds = UnpairedDataset([SHARED_DATA / "train"], make_degradation(spec_deg, 4 if task == "sr-x4" else 1), seed=0)
    loader = make_loader(ds, PatchSchedule([Phase(steps, patch, batch)]), 0, steps, workers=workers)
    wait = total = 0.0
    it = iter(loader)
    next(it)  # start-up of the workers is not steady-state waiting
    mark = time.perf_counter()
    for _ in it:
        now = time.perf_counter()
        wait += now - mark
        time.sleep(step_s)
        total += time.perf_counter() - mark
        mark = time.perf_counter()
    return wait / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=["deblur", "sr-x4", "inpaint"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = Path(args.out) / "train_speed_tmp"
    result: dict = {"threads": args.threads, "torch": torch.__version__, "machine": platform.processor() or "cpu"}
    result["load_average_start"] = os.getloadavg()
    result["steps"] = [
        step_speed(task, stage, patch, 8, args.steps, tmp)
        for task in args.tasks
        for stage in (1, 2)
        for patch in (64, 128)
    ]
    result["loader"] = [loader_speed(t, 64, 8, w, 4 * args.steps) for t in args.tasks for w in (0, 2)]
    for t in args.tasks:
        step = next(s for s in result["steps"] if s["task"] == t and s["stage"] == 1 and s["patch"] == 64)
        result.setdefault("wait_share_2_workers", {})[t] = waiting_share(
            t, 64, 8, 2, 4 * args.steps, step["s_per_step"]
        )
    result["load_average_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
