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
    dihedral_np,
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


def _kernel_kinds(deg: MotionBlur, n: int) -> dict[str, int]:
    """Classify n seeded draws: identity (1x1), mild (<= 9 px synthetic), levin (a real kernel), large."""
    levin = {
        k.tobytes() for k in deg.real for k in [np.rot90(k, r) for r in range(4)] + [np.rot90(k.T, r) for r in range(4)]
    }
    kinds = {"identity": 0, "mild": 0, "levin": 0, "large": 0}
    rng = np.random.default_rng(7)
    for _ in range(n):
        k = deg.draw(rng, 64, 64)["kernel"]
        if k.shape == (1, 1):
            kinds["identity"] += 1
        elif np.ascontiguousarray(k).tobytes() in levin:
            kinds["levin"] += 1
        elif k.shape[0] <= 9:
            kinds["mild"] += 1
        else:
            kinds["large"] += 1
    return kinds


def test_motion_blur_mixture_follows_its_probabilities():
    deg = MotionBlur(p_real=0.75, kernel_sizes=(11, 27), p_identity=0.2, p_mild=0.25, mild_sizes=(3, 9))
    n = 2000
    kinds = _kernel_kinds(deg, n)
    expected = {"identity": 0.2, "mild": 0.25, "levin": 0.55 * 0.75, "large": 0.55 * 0.25}
    for kind, p in expected.items():  # binomial: 4 standard deviations
        assert abs(kinds[kind] / n - p) < 4 * (p * (1 - p) / n) ** 0.5, (kind, kinds)


def test_mild_shake_kernels_are_small_centred_and_normalised():
    deg = MotionBlur(p_real=0.0, p_identity=0.0, p_mild=1.0, mild_sizes=(3, 9))
    rng = np.random.default_rng(3)
    sizes = set()
    for _ in range(200):
        k = deg.draw(rng, 64, 64)["kernel"]
        sizes.add(k.shape[0])
        assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1 and 3 <= k.shape[0] <= 9
        assert k.min() >= 0 and abs(k.sum() - 1) < 1e-9
        c = (k.shape[0] - 1) / 2  # centred: the blur does not shift the image
        yy, xx = np.mgrid[0 : k.shape[0], 0 : k.shape[1]]
        assert abs((k * yy).sum() - c) < 0.5 and abs((k * xx).sum() - c) < 0.5
    assert sizes == {3, 5, 7, 9}


def test_identity_draw_leaves_the_image_sharp_up_to_its_noise():
    img = _img()
    deg = MotionBlur(p_real=0.0, p_identity=1.0, noise_sigma=(0.0, 0.0))
    out = degrade(deg, img, np.random.default_rng(0)).lq
    assert torch.equal(out, (img * 255).round() / 255)
    noisy = MotionBlur(p_real=0.0, p_identity=1.0, noise_sigma=(2 / 255, 2 / 255))
    diff = degrade(noisy, img, np.random.default_rng(0)).lq - img
    assert 1.5 / 255 < diff.std() < 2.5 / 255


def test_motion_blur_without_new_shares_draws_as_before():
    """p_identity = p_mild = 0 must replay the old two-way mixture draw for draw (seeded batches of
    earlier runs stay reproducible)."""
    old = MotionBlur(p_real=0.5, kernel_sizes=(11, 31))
    rng_a, rng_b = np.random.default_rng(11), np.random.default_rng(11)
    for _ in range(30):
        a = old.draw(rng_a, 64, 64)
        # the old draw: real kernel with p_real, else trajectory of size in range, length U(2, size - 2)
        if rng_b.random() < 0.5:
            ref = old.real[int(rng_b.integers(8))]
            code = int(rng_b.integers(8))
            ref = dihedral_np(ref, code)
        else:
            size = int(rng_b.integers(5, 16)) * 2 + 1
            ref = random_trajectory_kernel(rng_b, size, float(rng_b.uniform(2.0, size - 2)))
        assert np.array_equal(a["kernel"], ref)
        assert a["sigma"] == float(rng_b.uniform(0, 3 / 255)) and a["noise_seed"] == int(rng_b.integers(2**31))


def test_motion_blur_rejects_shares_over_one():
    with pytest.raises(ValueError):
        MotionBlur(p_real=0.0, p_identity=0.6, p_mild=0.5)
