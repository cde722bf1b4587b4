"""Inpainting input and output conventions (official predictor): 1 = hole in the mask."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.config import ModelConfig


def binarize_mask(mask: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """The official predictor treats any non-zero mask value as hole: `mask > 0`."""
    return (mask > threshold).to(torch.float32)


def network_input(image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """What a network sees: the image itself, or for inpainting the 4 channels
    `[image * (1 - mask), mask]` (RGB zeroed inside the hole, then the mask).

    Channels are dim -3, so one image (C, H, W) and a batch (B, C, H, W) both work.
    """
    if mask is None:
        return image
    return torch.cat([image * (1 - mask), mask], dim=-3)


def composite(image: torch.Tensor, mask: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """The inpainting answer: known pixels from `image`, the prediction inside the hole (mask 1)."""
    return mask * prediction + (1 - mask) * image


# Conjugate-gradient iterations of the Laplace solve at each pyramid level, finest first: thin
# strokes are settled at the fine levels, large holes at the coarse ones (where an iteration is
# cheap; a level w pixels wide needs at most ~w of them). 8 halvings cover holes up to ~256 px
# before the coarsest average takes over. Then the biharmonic iterations at full resolution bend
# the membrane into a surface whose slope continues across the hole border (+0.35 dB on the
# issue-4 inpainting set: 23.37 -> 23.73 dB).
FILL_LEVELS = 8
FILL_ITERATIONS = (48, 48, 48, 48, 48, 32, 16, 8, 4)
FILL_BIHARMONIC_ITERATIONS = ModelConfig.fill_biharmonic_iterations


# Floors of the divisions below. They are meant for float32 (where the fill always runs): 1e-12
# is 0 in float16, and an empty hole (0/0 at some level, or an all-zero mask) would become NaN.
CG_EPS = 1e-12
WEIGHT_EPS = 1e-6


def _floor(dtype: torch.dtype, eps: float) -> float:
    """`eps`, raised to the smallest normal number of `dtype` so that it is never rounded to 0."""
    return max(eps, torch.finfo(dtype).tiny)


def _laplacian(u: torch.Tensor) -> torch.Tensor:
    """5-point Laplacian, replicated border (no flux across the image edge); shifts, not a conv,
    so that the exported graph needs no channel-sized kernel (and a depth-wise conv is slower)."""
    p = F.pad(u, (1, 1, 1, 1), mode="replicate")
    s = p[..., :-2, 1:-1] + p[..., 2:, 1:-1]
    s = s + p[..., 1:-1, :-2]
    s = s + p[..., 1:-1, 2:]
    return torch.sub(s, u, alpha=4)


def _negative_laplacian(u: torch.Tensor) -> torch.Tensor:
    return -_laplacian(u)


def _bilaplacian(u: torch.Tensor) -> torch.Tensor:
    return _laplacian(_laplacian(u))


# How far past the hole the relaxations read: the biharmonic operator is two 5-point Laplacians, so
# a hole pixel's update reads pixels 2 away, and a Laplacian taken 1 away must not reach the
# replicated border of a crop. A crop grown by this margin relaxes exactly as the whole image does.
HOLE_MARGIN = 2


def _hole_box(hole: torch.Tensor, margin: int) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the bounding box of `hole` grown by `margin` and clipped to the
    image, or None when the hole is empty."""
    rows = torch.nonzero(hole.amax(dim=(0, 1, 3)) > 0).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(hole.amax(dim=(0, 1, 2)) > 0).flatten()
    h, w = hole.shape[-2:]
    top, bottom = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, h)
    left, right = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, w)
    return top, left, bottom, right


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product (B, 1, 1, 1). A sum of products, not a batched matmul: its rounding
    does not depend on the batch size, so the per-sample eager solve and a traced graph's batched one
    agree exactly (CG amplifies a last-bit difference to 1e-4 over 100 steps)."""
    return (a * b).sum(dim=(1, 2, 3), keepdim=True)


def _conjugate_gradients(
    u: torch.Tensor, hole: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor], iterations: int
) -> torch.Tensor:
    """`iterations` CG steps on hole * op(hole * x) = -hole * op(known part), starting from `u`."""
    tiny = _floor(u.dtype, CG_EPS)
    r = -op(u) * hole  # residual of the current u
    p = r
    rs = _dot(r, r)
    for _ in range(iterations):
        ap = op(p * hole) * hole
        alpha = rs / _dot(p, ap).clamp_min(tiny)
        u = torch.addcmul(u, alpha, p)
        r = torch.addcmul(r, alpha, ap, value=-1)
        rs_next = _dot(r, r)
        p = torch.addcmul(r, rs_next / rs.clamp_min(tiny), p)
        rs = rs_next
    return u


def _relax(
    u: torch.Tensor, hole: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor], iterations: int
) -> torch.Tensor:
    """Move `u` towards the solution of op(u) = 0 inside `hole` (pixels outside are fixed).

    Conjugate gradients on hole * op(hole * x) = -hole * op(known part), which is symmetric positive
    definite on the hole for op = -Laplacian (harmonic fill) and Laplacian^2 (biharmonic fill).
    A fixed number of iterations from `u`: converges in O(width) iterations where Jacobi needs
    O(width^2), and is fixed-shape tensor work that exports like a convolution.

    Every CG vector is zero outside the hole, so run eagerly it works on the hole's bounding box
    (plus `HOLE_MARGIN`) only: the same solve, at the cost of the hole rather than of the image
    (a 512² photo with a scratch: a few percent of the work); rounding differs at the 1e-4 level
    after 100 iterations. A traced graph keeps the whole image, as a crop computed from one
    example's mask would be frozen into it.
    """
    if torch.jit.is_tracing():
        return _conjugate_gradients(u, hole, op, iterations)
    box = _hole_box(hole, HOLE_MARGIN)
    if box is None:
        return u  # nothing to fill: every step would add 0
    top, left, bottom, right = box
    if (bottom - top, right - left) == tuple(u.shape[-2:]):
        return _conjugate_gradients(u, hole, op, iterations)
    inner = _conjugate_gradients(u[..., top:bottom, left:right], hole[..., top:bottom, left:right], op, iterations)
    out = u.clone()
    out[..., top:bottom, left:right] = inner
    return out


def smooth_fill(
    image: torch.Tensor, mask: torch.Tensor, biharmonic_iterations: int = FILL_BIHARMONIC_ITERATIONS
) -> torch.Tensor:
    """Fill the hole (mask 1) with a smooth membrane from its border, known pixels unchanged.

    Why: a small network trained briefly on a CPU learns to *refine* a plausible fill far sooner
    than to propagate colour across a large hole from zeros. The fill is a coarse-to-fine
    mask-weighted average pyramid (push-pull) whose every level is relaxed towards the harmonic
    (Laplace) interpolant by a few conjugate-gradient iterations, a cheap multigrid solve, then
    relaxed towards the biharmonic interpolant (what scikit-image's inpaint_biharmonic solves) at
    full resolution. Only fixed-size tensor ops, so it traces and exports with dynamic H, W like
    the rest of the network.

    Run eagerly, a batch is filled one image at a time: each solve then crops to its own hole
    (`_relax`), so an image's fill does not depend on the holes of the others in its batch.

    `biharmonic_iterations` is part of a model's definition (`ModelConfig.fill_biharmonic_iterations`):
    a network learns a correction of one particular fill.
    """
    if image.shape[0] > 1 and not torch.jit.is_tracing():
        masks = mask if mask.shape[0] == image.shape[0] else mask.expand(image.shape[0], *mask.shape[1:])
        return torch.cat(
            [smooth_fill(image[i : i + 1], masks[i : i + 1], biharmonic_iterations) for i in range(image.shape[0])]
        )
    out_dtype = image.dtype
    # Always in (at least) float32: CG sums of squares over a whole level and their quotients do
    # not fit float16, whatever precision the rest of the network runs in.
    dtype = torch.promote_types(image.dtype, torch.float32)
    image, mask = image.to(dtype), mask.to(dtype)
    weight_eps = _floor(dtype, WEIGHT_EPS)
    known = 1 - mask
    values, weights = [image * known], [known]
    for _ in range(FILL_LEVELS):
        values.append(F.avg_pool2d(values[-1], 2, ceil_mode=True))
        weights.append(F.avg_pool2d(weights[-1], 2, ceil_mode=True))
    f = values[-1] / weights[-1].clamp_min(weight_eps)
    for level in range(FILL_LEVELS, -1, -1):
        v, w = values[level], weights[level]
        full = (w >= 0.999).to(dtype)
        if level < FILL_LEVELS:
            up = F.interpolate(f, scale_factor=2.0, mode="bilinear", align_corners=False)
            up = up[..., : v.shape[-2], : v.shape[-1]]
            f = full * (v / w.clamp_min(weight_eps)) + (1 - full) * up
        f = _relax(f, 1 - full, _negative_laplacian, FILL_ITERATIONS[level])
    f = _relax(f, mask, _bilaplacian, biharmonic_iterations)
    return (known * image + mask * f).to(out_dtype)
