"""Stage-1 and stage-2 DiffIR compositions.

`DiffIRS2.forward(lq, noise=None, generator=None)` is the serving and export contract: one
return type, no side effects, and randomness only where the caller asks for it.

Seed rule: seed `s` means `x_T = torch.randn((B, 256), generator=torch.Generator().manual_seed(s))`
drawn on the CPU (then moved to the input's device). That is exactly the first draw the official
code makes after `torch.manual_seed(s)`, so official outputs are reproduced bit-for-bit in x_T.
"""

from __future__ import annotations

import torch
from torch import nn

from models.config import ModelConfig
from models.cpen import CPEN, cpen_s1_input, cpen_s2_input, window_boxes
from models.diffusion import DenoiseMLP, IPRDiffusion, StepRecord
from models.dirformer import DIRformer
from models.sizing import crop_output, pad_to_multiple


def draw_noise(batch: int, dim: int, generator: torch.Generator | None) -> torch.Tensor:
    """Initial IPR noise x_T, always drawn on the CPU so a seed means the same on every device."""
    return torch.randn((batch, dim), generator=generator)


def noise_for_seed(seed: int, batch: int = 1, dim: int = 256) -> torch.Tensor:
    """x_T for seed `s` (see the module docstring)."""
    return draw_noise(batch, dim, torch.Generator().manual_seed(seed))


class DiffIRS1(nn.Module):
    """Stage 1: IPR from CPEN_S1(LQ, GT), then DIRformer. Only needed for training."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.G = DIRformer(config)
        self.E = CPEN(config.cpen_s1_in_channels, config.cpen.n_resblocks, config.cpen.n_feats)

    def ipr(self, lq: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.E(cpen_s1_input(self.config, lq, gt))

    def forward(self, lq: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.G(lq, self.ipr(lq, gt))


class DiffIRS2(nn.Module):
    """Stage 2: CPEN_S2 -> 4-step IPR diffusion -> DIRformer; never sees the ground truth."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.G = DIRformer(config)
        self.condition = CPEN(config.cpen_s2_in_channels, config.cpen.n_resblocks, config.cpen.n_feats)
        self.denoise = DenoiseMLP(config.ipr_dim, config.diffusion.timesteps, config.diffusion.n_denoise_res)
        self.diffusion = IPRDiffusion(config.diffusion, self.denoise, self.condition)

    # --- the two halves (exported separately for tiled restoration) ----------------------------
    def condition_vector(self, lq: torch.Tensor) -> torch.Tensor:
        return self.condition(cpen_s2_input(self.config, lq))

    def prior_trajectory(self, lq: torch.Tensor, noise: torch.Tensor) -> list[StepRecord]:
        """Every reverse step from x_T = `noise` (for inspection and parity tests).

        `type_as`, not `.to(lq)`: a trace records the latter's device as a constant."""
        return self.diffusion.reverse(self.condition_vector(lq), noise.type_as(lq))

    def prior(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The estimated IPR: CPEN_S2 + 4 denoiser steps from x_T = `noise`."""
        return self.prior_trajectory(lq, noise)[-1].z_out

    def prior_windowed(self, lq: torch.Tensor, noise: torch.Tensor, window: int) -> torch.Tensor:
        """`prior` in bounded memory for very large inputs: CPEN's trunk runs on `window`-edge
        windows (at CPEN resolution); exact up to float summation order (`WindowedPrior`)."""
        run = WindowedPrior(self, lq, noise, window)
        while run.step():
            pass
        return run.ipr

    def restore(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        """DIRformer(lq, ipr): the restorer half."""
        return self.G(lq, ipr)

    # --- inference ------------------------------------------------------------------------------
    def forward(
        self,
        lq: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Restore a batch whose H, W are multiples of `config.size_multiple`."""
        if noise is None:
            noise = draw_noise(lq.shape[0], self.config.ipr_dim, generator)
        return self.restore(lq, self.prior(lq, noise))

    def forward_any_size(
        self,
        lq: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Pad to the variant's multiple (its official padding mode), restore, crop back."""
        padded, (h, w) = pad_to_multiple(lq, self.config.size_multiple, self.config.pad_mode)
        out = self.forward(padded, noise=noise, generator=generator)
        return crop_output(out, h * self.config.scale, w * self.config.scale)

    # --- training -------------------------------------------------------------------------------
    def forward_train(
        self,
        lq: torch.Tensor,
        ipr_s1: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage-2 training forward: diffuse the S1 IPR to t = T-1, run all steps, restore.

        Returns the image restored with the *estimated* IPR and the IPR after every reverse
        step (the last one is what L_diff compares with `ipr_s1`). Gradients flow through all
        steps into the denoiser and CPEN_S2.
        """
        if noise is None:
            noise = draw_noise(lq.shape[0], self.config.ipr_dim, generator).to(ipr_s1)
        z_start = self.diffusion.diffuse_to_last_step(ipr_s1, noise)
        records = self.diffusion.reverse(self.condition_vector(lq), z_start)
        iprs = [r.z_out for r in records]
        return self.restore(lq, iprs[-1]), iprs


class WindowedPrior:
    """The IPR of one (large) input computed one CPEN window per `step()`, so that a server can run
    other work between the windows: the prior of a big image is otherwise one long, unsplittable
    computation (in the shipped models CPEN costs 0.5-0.9x the DIRformer per pixel). Same result as
    `DiffIRS2.prior` up to float summation order (see `CPEN.window_sum`).
    """

    def __init__(self, net: DiffIRS2, lq: torch.Tensor, noise: torch.Tensor, window: int) -> None:
        self.net = net
        self.x: torch.Tensor | None = cpen_s2_input(net.config, lq)
        h, w = self.x.shape[-2:]
        self.pixels = h * w
        self.boxes = window_boxes(h, w, window) if h * w > window * window else []
        self.halo = net.condition.halo()
        self.noise = noise.to(lq)
        self.total: torch.Tensor | None = None
        self.done = 0
        self._ipr: torch.Tensor | None = None

    @property
    def units(self) -> int:
        """How many `step()` calls the prior takes."""
        return max(1, len(self.boxes))

    def step(self) -> bool:
        """Run the next window (the last one also pools and runs the denoiser); True while more remain."""
        if self._ipr is not None:
            return False
        assert self.x is not None
        cpen = self.net.condition
        if not self.boxes:
            condition = cpen(self.x)
        else:
            part = cpen.window_sum(self.x, self.boxes[self.done], self.halo)
            self.total = part if self.total is None else self.total + part
            self.done += 1
            if self.done < len(self.boxes):
                return True
            condition = cpen.head((self.total / self.pixels).to(self.x.dtype))
        self._ipr = self.net.diffusion.reverse(condition, self.noise)[-1].z_out
        self.x = self.total = None  # the input copy and partial sums are no longer needed
        return False

    @property
    def ipr(self) -> torch.Tensor:
        if self._ipr is None:
            raise RuntimeError(f"the prior is not finished ({self.done} of {self.units} windows)")
        return self._ipr
