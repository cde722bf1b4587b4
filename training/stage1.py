"""Stage 1: CPEN_S1 (sees LQ and GT) + DIRformer trained from scratch on the image losses."""

from __future__ import annotations

import torch
from torch import nn

from models.diffir import DiffIRS1
from training.config import TrainConfig
from training.objective import ImageObjective


class Stage1Step(nn.Module):
    """One stage-1 forward: restored image and losses (DDP wraps this module)."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        super().__init__()
        mc = cfg.model_config()
        torch.manual_seed(cfg.seed)
        self.net = DiffIRS1(mc).to(device).train()
        self.device = device
        self.objective = ImageObjective(cfg, mc, device)
        object.__setattr__(self, "disc", self.objective.disc)

    def forward(self, batch: dict[str, torch.Tensor], noise_gen: torch.Generator, warm: bool):
        out = self.net(batch["lq"], batch["gt"]).float()
        loss, logs = self.objective.generator_loss(out, batch)
        logs["loss"] = loss.item()
        return loss, logs, (out if self.disc is not None else None)

    def disc_loss(self, disc: nn.Module, batch: dict[str, torch.Tensor], fake: torch.Tensor) -> torch.Tensor:
        return self.objective.disc_loss(disc, batch, fake)
