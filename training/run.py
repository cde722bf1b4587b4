"""Set up one stage (process group, threads, device) and run its loop."""

from __future__ import annotations

import json
import sys

import torch

from training import distributed as ddp
from training.config import TrainConfig, to_dict
from training.loop import Trainer


def run_stage(cfg: TrainConfig):
    ddp.init()
    try:
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        device = ddp.pick_device(cfg.device)
        if ddp.rank() == 0:
            cfg.stage_dir.mkdir(parents=True, exist_ok=True)
            (cfg.stage_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
            print(f"[training] stage {cfg.stage} {cfg.task} on {device} x{ddp.world_size()} -> {cfg.stage_dir}",
                  file=sys.stderr)  # fmt: skip
        if cfg.stage == 1:
            from training.stage1 import Stage1Step as StepModule
        else:
            from training.stage2 import Stage2Step as StepModule
        return Trainer(cfg, StepModule(cfg, device)).fit()
    finally:
        ddp.cleanup()
