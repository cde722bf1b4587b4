"""Continue the three shipped models on a lent GPU within a fixed device-time budget (`make train-gpu`).

`python -m training.gpu_recipe --out DIR [--minutes 8] [--tasks deblur sr-x4 inpaint] [--data-root DIR]
[--dry-run]`

Each task continues its shipped network (`models/weights/<task>.safetensors`) teacher-free (the
stage-1 checkpoints are not shipped; see `TrainConfig.teacher`) with its continuation recipe's data,
degradation and losses, but at GPU sizes: 256 px patches, batch 32, bf16 autocast, many loader
workers, a constant learning rate with EMA, and a wall-time share of the budget (`--minutes`,
split by `SHARES`) after which it saves and stops. Checkpoints go to `DIR/<task>/s2/` every
`save_every` steps and at the end, so a device's output folder (`$OUT`) brings them back to be
probed and shipped on the CPU. Nothing here needs a GPU to be *checked*: `--dry-run` runs the same
plan on the CPU at toy sizes (a few steps, 32 px) in seconds, and `make test` does that.

The data is the shared folder's `train/` (and the Levin kernels under `tasks/deblur/kernels/`). A
device gets a copy of the repository only, so copy those two folders (35 MB) into an ignored folder
of the checkout, carry it, and pass it as `--data-root`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from models.tasks import get_task
from training.config import TrainConfig, apply_overrides, load_config_file

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TASK_RECIPES = {"deblur": "deblur-s2-noharm.toml", "sr-x4": "sr-x4-s2.toml", "inpaint": "inpaint-s2.toml"}
SHARES = {"deblur": 0.45, "sr-x4": 0.3, "inpaint": 0.25}
"""Share of the budget per task: deblur is the furthest from its bar."""
GPU_SIZES = {"patches": [256], "batches": [32], "workers": 12, "precision": "bf16", "device": "cuda"}
DRY_SIZES = {"patches": [32], "batches": [1], "workers": 0, "precision": "fp32", "device": "cpu", "steps": 2}
log = logging.getLogger("training.gpu_recipe")


def plan(task: str, out: Path, minutes: float, dry_run: bool, data_root: Path | None = None) -> TrainConfig:
    """The continuation config of one task (its recipe file, then the GPU or dry-run sizes)."""
    values = load_config_file(CONFIG_DIR / TASK_RECIPES[task])
    if data_root is not None:
        values["data"] = [str(data_root / "train")]
    cfg = apply_overrides(TrainConfig(task=task, stage=2), values, TASK_RECIPES[task])
    common = {
        "teacher": False,
        "init_student": str(get_task(task).default_checkpoint_path()),
        "encoder_frac": 0.0,
        "schedule": "constant",
        "lr": 5e-5,
        "ema": 0.999,
        "ema_warmup": True,
        "phase_fracs": [],
        "steps": 100_000,
        "max_minutes": round(minutes * SHARES[task], 2),
        "save_every": 200,
        "keep": 5,
        "val": "",
        "log_every": 20,
        "progress": False,
        "resume": (out / task / "s2" / "state.pt").is_file(),
        "out": str(out / task),
    }
    sizes = DRY_SIZES | {"max_minutes": 0.0, "save_every": 1, "threads": 1} if dry_run else GPU_SIZES
    return apply_overrides(cfg, common | sizes, "gpu recipe")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.gpu_recipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where checkpoints go (on a device: $OUT)")
    parser.add_argument("--minutes", type=float, default=8.0, help="device wall time for all tasks together")
    parser.add_argument("--tasks", nargs="+", default=list(TASK_RECIPES), choices=list(TASK_RECIPES))
    parser.add_argument("--dry-run", action="store_true", help="the same plan on the CPU at toy sizes")
    parser.add_argument("--data-root", type=Path, help="a copy of the shared data folder (train/, tasks/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.data_root is not None:  # the Levin kernels are found through it (read when degradations load)
        os.environ["DIFFIR_SHARED_DATA"] = str(args.data_root.resolve())
    from training.run import run_stage

    done = {}
    for task in args.tasks:
        cfg = plan(task, args.out, args.minutes, args.dry_run, args.data_root)
        log.info("%s: %s", task, json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k in KEYS_SHOWN}))
        done[task] = str(run_stage(cfg))
    (args.out / "gpu_recipe.json").write_text(json.dumps(done, indent=2) + "\n")
    return 0


KEYS_SHOWN = ("patches", "batches", "precision", "device", "max_minutes", "init_student", "lr", "steps")

if __name__ == "__main__":
    raise SystemExit(main())
