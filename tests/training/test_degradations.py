"""Degradations: seeded determinism, ranges, shapes, normalised kernels, mask coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.degradations import (
    LamaMasks,
    MotionBlur,
    bicubic_down,
    convolve,
    degrade,
    load_levin_kernels,
    make_degradation,
    network_input,
    random_trajectory_kernel,
)
from training.realesrgan import RealESRGAN, random_kernel, sinc_kernel


def _img(h=48, w=64, seed=0):
    return torch.rand((3, h, w), generator=torch.Generator().manual_seed(seed))


def _on_8bit_grid(x: torch.Tensor) -> bool:
    return torch.equal(x, (x * 255).round() / 255)


def test_bicubic_is_antialiased_torch_bicubic_quantised():
    gt = _img(64, 96)
    lq = bicubic_down(gt, 4)
    ref = F.interpolate(gt[None], size=(16, 24), mode="bicubic", antialias=True)[0]
    assert lq.shape == (3, 16, 24)
    assert torch.equal(lq, (ref.clamp(0, 1) * 255).round() / 255)
    with pytest.raises(ValueError):
        bicubic_down(_img(30, 32), 4)


def test_convolve_with_delta_is_identity_and_true_convolution():
    img = _img()
    delta = np.zeros((5, 5))
    delta[2, 2] = 1
    assert torch.allclose(convolve(img, delta), img, atol=1e-6)
    shift = np.zeros((3, 3))
    shift[1, 2] = 1  # true convolution (not correlation): a tap right of centre moves content right
    out = convolve(img, shift)
    assert torch.allclose(out[:, :, 1:], img[:, :, :-1], atol=1e-6)


def test_levin_kernels_are_normalised():
    ks = load_levin_kernels()
    assert len(ks) == 8
    for k in ks:
        assert k.min() >= 0 and abs(k.sum() - 1) < 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_trajectory_kernels_are_normalised(seed):
    rng = np.random.default_rng(seed)
    k = random_trajectory_kernel(rng, 21, 12.0)
    assert k.shape == (21, 21) and k.min() >= 0 and abs(k.sum() - 1) < 1e-9
    assert (k > 0).sum() > 5  # an actual path, not a dot


def test_realesrgan_kernels_are_normalised():
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = random_kernel(rng, (0.2, 3.0), 0.1)
        assert k.shape == (21, 21) and abs(k.sum() - 1) < 1e-6
    assert abs(sinc_kernel(11, 2.0).sum() - 1) < 1e-6


@pytest.mark.parametrize("deg", [MotionBlur(), RealESRGAN(4), make_degradation("bicubic", 4), LamaMasks()])
def test_determinism_shapes_and_ranges(deg):
    gt = _img(64, 64)
    a = degrade(deg, gt, np.random.default_rng(7))
    b = degrade(deg, gt, np.random.default_rng(7))
    assert torch.equal(a.lq, b.lq)
    s = deg.scale
    assert a.lq.shape == (3, 64 // s, 64 // s)
    assert a.lq.min() >= 0 and a.lq.max() <= 1
    if not isinstance(deg, LamaMasks):
        assert _on_8bit_grid(a.lq)
    if s == 1 or isinstance(deg, RealESRGAN):  # random degradations differ between seeds
        others = [degrade(deg, gt, np.random.default_rng(x)).lq for x in range(8, 12)]
        assert any(not torch.equal(a.lq, o) for o in others)


def test_params_are_drawn_once_then_applied_purely():
    deg = MotionBlur()
    gt = _img()
    params = deg.draw(np.random.default_rng(3), *gt.shape[-2:])
    assert torch.equal(deg.apply(gt, params).lq, deg.apply(gt, params).lq)


def test_motion_blur_actually_blurs():
    gt = _img(64, 64)
    out = degrade(MotionBlur(p_real=0.0, noise_sigma=(0.0, 0.0)), gt, np.random.default_rng(1)).lq
    grad = lambda x: (x[:, 1:] - x[:, :-1]).abs().mean()  # noqa: E731
    assert grad(out) < 0.7 * grad(gt)


@pytest.mark.parametrize("size", [64, 256])
def test_mask_coverage_within_configured_range(size):
    lo, hi = 0.05, 0.5
    deg = LamaMasks(coverage=(lo, hi))
    rng = np.random.default_rng(0)
    covs = []
    for _ in range(30):
        out = degrade(deg, _img(size, size), rng)
        m = out.mask
        assert m.shape == (1, size, size)
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
        covs.append(m.mean().item())
        assert torch.equal(out.lq, _img(size, size) * (1 - m))
    assert all(lo <= c <= hi for c in covs)
    assert max(covs) - min(covs) > 0.1  # a real spread of sizes


def test_unconstrained_masks_use_both_generators():
    deg = LamaMasks()
    rng = np.random.default_rng(0)
    kinds = {deg.draw(rng, 256, 256)["shapes"][0][0] for _ in range(20)}
    assert kinds == {"line", "box"}


def test_network_input_is_masked_image_then_mask():
    gt = _img(16, 16)
    m = (torch.rand(1, 16, 16) > 0.5).float()
    x = network_input(gt, m)
    assert x.shape == (4, 16, 16)
    assert torch.equal(x[3:], m) and torch.equal(x[:3], gt * (1 - m))
