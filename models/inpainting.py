"""Inpainting input and output conventions (official predictor): 1 = hole in the mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def binarize_mask(mask: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """The official predictor treats any non-zero mask value as hole: `mask > 0`."""
    return (mask > threshold).to(torch.float32)


def network_input(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The 4-channel input: RGB zeroed inside the hole, then the mask."""
    return torch.cat([image * (1 - mask), mask], dim=1)


def composite(image: torch.Tensor, mask: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Keep known pixels, take the prediction inside the hole."""
    return mask * prediction + (1 - mask) * image


# Smoothing passes per pyramid level, finest first: thin strokes are settled at the fine levels,
# large holes at the coarse ones (where a pass is cheap). 8 halvings cover holes up to ~256 px
# before the coarsest average takes over.
FILL_LEVELS = 8
FILL_PASSES = (16, 32, 64, 64, 64, 64, 64, 64, 64)


def _smooth_holes(f: torch.Tensor, known: torch.Tensor, passes: int) -> torch.Tensor:
    for _ in range(passes):
        blurred = F.avg_pool2d(F.pad(f, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        f = known * f + (1 - known) * blurred
    return f


def smooth_fill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fill the hole (mask 1) with a smooth membrane from its border, known pixels unchanged.

    Why: a small network trained briefly on a CPU learns to *refine* a plausible fill far sooner
    than to propagate colour across a large hole from zeros. The fill is a coarse-to-fine
    mask-weighted average pyramid (push-pull) whose every level is relaxed by a few Jacobi passes
    of the Laplace equation, i.e. an approximate harmonic interpolation. Only fixed-size tensor
    ops, so it traces and exports with dynamic H, W like the rest of the network.
    """
    known = 1 - mask
    values, weights = [image * known], [known]
    for _ in range(FILL_LEVELS):
        values.append(F.avg_pool2d(values[-1], 2, ceil_mode=True))
        weights.append(F.avg_pool2d(weights[-1], 2, ceil_mode=True))
    f = values[-1] / weights[-1].clamp_min(1e-6)
    for level in range(FILL_LEVELS, -1, -1):
        v, w = values[level], weights[level]
        full = (w >= 0.999).to(image.dtype)
        if level < FILL_LEVELS:
            up = F.interpolate(f, scale_factor=2.0, mode="bilinear", align_corners=False)
            up = up[..., : v.shape[-2], : v.shape[-1]]
            f = full * (v / w.clamp_min(1e-6)) + (1 - full) * up
        f = _smooth_holes(f, full, FILL_PASSES[level])
    return known * image + mask * f
