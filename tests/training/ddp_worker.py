"""Run under torchrun by test_ddp.py: train a tiny stage 1 with DDP and dump this rank's weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from training import distributed as ddp
from training.config import TrainConfig
from training.loop import Trainer
from training.stage1 import Stage1Step


def main() -> None:
    torch.set_num_threads(1)
    values = json.loads(sys.argv[1])
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    ddp.init()
    try:
        trainer = Trainer(cfg, Stage1Step(cfg, torch.device("cpu")))
        before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
        trainer.fit()
        out = Path(cfg.out) / f"rank{ddp.rank()}.pt"
        torch.save({"before": before, "after": trainer.net.state_dict(), "world": ddp.world_size()}, out)
    finally:
        ddp.cleanup()


if __name__ == "__main__":
    main()
