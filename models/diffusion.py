"""The 4-step IPR diffusion: schedule (pure functions), denoising MLP and deterministic sampler.

The sampler is the official one: x0-prediction, posterior-mean steps, no noise added in reverse
steps, so the whole prior is a deterministic function of (LQ, x_T). Noise is always an argument;
nothing here touches a random number generator.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from models.config import DiffusionConfig
from models.layers import SampleLinear

LRELU_SLOPE = 0.1

SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def make_schedule(config: DiffusionConfig) -> dict[str, torch.Tensor]:
    """The 12 schedule buffers, computed in float64 and cast to float32 once.

    Betas are linear in sqrt(beta), then squared (latent-diffusion "linear"), not linear in beta.
    """
    t_count = config.timesteps
    lo, hi = math.sqrt(config.linear_start), math.sqrt(config.linear_end)
    betas = torch.linspace(lo, hi, t_count, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    values = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp_min(1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    }
    return {k: values[k].to(torch.float32) for k in SCHEDULE_BUFFERS}


class ResMLP(nn.Module):
    """Linear -> LReLU; named "res" in the official code but it has no residual connection."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.resmlp = nn.Sequential(SampleLinear(width, width), nn.LeakyReLU(LRELU_SLOPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resmlp(x)


class DenoiseMLP(nn.Module):
    """x0 predictor: MLP on [condition, t / (10 T), z_t] (key prefix `denoise.resmlp`)."""

    def __init__(self, ipr_dim: int, timesteps: int, n_res: int = 1) -> None:
        super().__init__()
        self.timesteps = timesteps
        self.resmlp = nn.Sequential(
            SampleLinear(2 * ipr_dim + 1, ipr_dim),
            nn.LeakyReLU(LRELU_SLOPE),
            *[ResMLP(ipr_dim) for _ in range(n_res)],
        )

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        tau = (t.to(z_t.dtype) / (10 * self.timesteps)).reshape(-1, 1)
        return self.resmlp(torch.cat([condition, tau, z_t], dim=1))


class StepRecord(NamedTuple):
    """One reverse step: integer t, the denoiser input z_t, its x0 prediction and z_{t-1}."""

    t: int
    z_in: torch.Tensor
    x0_pred: torch.Tensor
    z_out: torch.Tensor


class IPRDiffusion(nn.Module):
    """Schedule buffers plus *references* to the denoiser (`model`) and CPEN_S2 (`condition`).

    The references reproduce the official key layout (`diffusion.model.*`,
    `diffusion.condition.*` alias `denoise.*` / `condition.*`), so official files load strictly.
    """

    def __init__(self, config: DiffusionConfig, model: DenoiseMLP, condition: nn.Module) -> None:
        super().__init__()
        self.timesteps = config.timesteps
        for name, value in make_schedule(config).items():
            self.register_buffer(name, value)
        self.model = model
        self.condition = condition

    def diffuse_to_last_step(self, z0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """q(z_{T-1} | z0): where stage-2 training starts (almost pure noise at T = 4)."""
        last = self.timesteps - 1
        return self.sqrt_alphas_cumprod[last] * z0 + self.sqrt_one_minus_alphas_cumprod[last] * noise

    def reverse(self, condition: torch.Tensor, z_start: torch.Tensor) -> list[StepRecord]:
        """Run t = T-1 .. 0; each step is the posterior mean c1 * x0_hat + c2 * z_t."""
        records = []
        z = z_start
        for t in range(self.timesteps - 1, -1, -1):
            # From `z`, never `device=z.device`: a trace records a device as a constant, so a graph
            # traced on the CPU would build this tensor on the CPU when it runs on CUDA.
            t_batch = z.new_full((z.shape[0],), t, dtype=torch.long)
            x0 = self.model(z, t_batch, condition)
            z_next = self.posterior_mean_coef1[t] * x0 + self.posterior_mean_coef2[t] * z
            records.append(StepRecord(t, z, x0, z_next))
            z = z_next
        return records
