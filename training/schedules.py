"""Learning-rate schedules of the official recipes, as pure functions of the step.

Pure functions (no scheduler objects with hidden state) make resuming trivial: the LR of step
`s` depends on `s` and the config only. Milestones/periods are fractions of the total steps.
"""

from __future__ import annotations

import math

from training.config import TrainConfig


def base_lr(cfg: TrainConfig, step: int) -> float:
    """LR of the main optimiser at 0-based `step` (BasicSR counts from 1: we use step + 1)."""
    it = step + 1
    n = cfg.steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "multistep":
        passed = sum(1 for m in cfg.milestones if it > round(m * n))
        return cfg.lr * cfg.gamma**passed
    if cfg.schedule == "cosine":
        return cfg.eta_min[0] + 0.5 * (cfg.lr - cfg.eta_min[0]) * (1 + math.cos(math.pi * min(it, n) / n))
    if cfg.schedule == "cosine_restart":
        ends = [round(sum(cfg.periods[: i + 1]) * n) for i in range(len(cfg.periods))]
        start = 0
        for i, end in enumerate(ends):
            if it <= end or i == len(ends) - 1:
                period = max(1, end - start)
                pos = min(it - start, period)
                lo, hi = cfg.eta_min[i], cfg.lr * cfg.restart_weights[i]
                return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * pos / period))
            start = end
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def encoder_steps(cfg: TrainConfig) -> int:
    return round(cfg.encoder_frac * cfg.steps) if cfg.stage == 2 else 0


def warmup_lr(cfg: TrainConfig, step: int) -> float:
    """Stage-2 encoder warm-up: lr_encoder, x0.1 after `encoder_decay_frac` of the warm-up."""
    return cfg.lr_encoder * (0.1 if step >= cfg.encoder_decay_frac * encoder_steps(cfg) else 1.0)


def joint_lr(cfg: TrainConfig, step: int) -> float:
    """Stage-2 joint phase: step decay counted from the end of the warm-up (deblur/realsr), else `schedule`."""
    if cfg.joint_decay_frac > 0:
        every = max(1, round(cfg.joint_decay_frac * cfg.steps))
        return cfg.lr * cfg.gamma ** ((step - encoder_steps(cfg)) // every)
    return base_lr(cfg, step)
