"""Stage 2: CPEN_S2 + 4-step denoiser + DIRformer trained jointly against a frozen stage-1 teacher.

Initialisation follows the official code: the DIRformer (`G.*`) is copied from the stage-1
checkpoint, CPEN_S2 and the denoiser start fresh, and a frozen copy of the stage-1 network gives
the target IPR z = CPEN_S1(lq, gt). The loss runs the full 4-step chain from the noised z and
compares only the final IPR (L_diff); during the optional warm-up only L_diff is optimised.

Without a teacher (`teacher = false`, for continuing a shipped network whose stage-1 checkpoint is
not kept), the step trains exactly what the service runs: the prior from pure noise x_T through
CPEN_S2 + the 4 denoiser steps, then the DIRformer, on the image losses alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.checkpoint import load_model, load_stage1_model
from models.diffir import DiffIRS2
from training import losses
from training.config import TrainConfig
from training.objective import ImageObjective


def default_init(cfg: TrainConfig) -> Path:
    return Path(cfg.init) if cfg.init else cfg.run_dir / "s1" / "model_latest.safetensors"


class Stage2Step(nn.Module):
    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.diff_weight = cfg.diff_weight
        if not cfg.teacher:
            self.net = load_model(cfg.init_student, device=device)
            if cfg.with_fill(self.net.config) != self.net.config:  # same weights behind another pre-fill
                self.net = load_model(cfg.init_student, cfg.with_fill(self.net.config), device=device)
            self.net.train().requires_grad_(True)
            object.__setattr__(self, "teacher", None)
            self.objective = ImageObjective(cfg, self.net.config, device)
            object.__setattr__(self, "disc", self.objective.disc)
            return
        init = default_init(cfg)
        if not init.is_file():
            raise FileNotFoundError(f"stage 2 needs a stage-1 checkpoint: {init} (pass --init or run stage1 first)")
        teacher = load_stage1_model(init, device=device).requires_grad_(False).eval()
        torch.manual_seed(cfg.seed)
        config = cfg.with_fill(teacher.config)
        self.net = DiffIRS2(config).to(device).train()
        if cfg.init_student:
            student = load_model(cfg.init_student, config, device=device)
            self.net.load_state_dict(student.state_dict())
        else:
            self.net.G.load_state_dict(teacher.G.state_dict())
        object.__setattr__(self, "teacher", teacher)
        self.objective = ImageObjective(cfg, teacher.config, device)
        object.__setattr__(self, "disc", self.objective.disc)

    def forward(self, batch: dict[str, torch.Tensor], noise_gen: torch.Generator, warm: bool):
        lq, gt = batch["lq"], batch["gt"]
        if self.teacher is None:
            noise = torch.randn((lq.shape[0], self.net.config.ipr_dim), generator=noise_gen).to(lq)
            out = self.net(lq, noise=noise).float()
            loss, logs = self.objective.generator_loss(out, batch)
            logs["loss"] = loss.item()
            return loss, logs, (out if self.disc is not None else None)
        with torch.no_grad():
            z = self.teacher.ipr(lq, gt)
        noise = torch.randn(z.shape, generator=noise_gen).to(z)
        if warm:
            diffusion = self.net.diffusion
            records = diffusion.reverse(self.net.condition_vector(lq), diffusion.diffuse_to_last_step(z, noise))
            ld = losses.l_diff(records[-1].z_out.float(), z.float())
            return self.diff_weight * ld, {"diff": ld.item(), "loss": ld.item()}, None
        out, iprs = self.net.forward_train(lq, z, noise=noise)
        out = out.float()
        loss, logs = self.objective.generator_loss(out, batch)
        ld = losses.l_diff(iprs[-1].float(), z.float())
        loss = loss + self.diff_weight * ld
        logs["diff"] = ld.item()
        logs["loss"] = loss.item()
        return loss, logs, (out if self.disc is not None else None)

    def disc_loss(self, disc: nn.Module, batch: dict[str, torch.Tensor], fake: torch.Tensor) -> torch.Tensor:
        return self.objective.disc_loss(disc, batch, fake)
