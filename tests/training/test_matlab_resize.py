"""The MATLAB-compatible bicubic imresize of the standard SR protocol, checked against properties derived
from its definition (not against another implementation's output)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.matlab_resize import cubic, imresize, resize_matrix


def test_cubic_kernel_values_by_hand():
    # a = -0.5: 1.5|x|^3 - 2.5|x|^2 + 1 inside 1, -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2 inside 2, 0 beyond
    x = np.array([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5])
    expected = [1.0, 0.8671875, 0.2265625, 0.0, -0.0703125, -0.0234375, 0.0, 0.0]
    np.testing.assert_allclose(cubic(x), expected, atol=1e-12)


def test_halving_weights_by_hand():
    """Scale 1/2: the kernel is 0.5 * cubic(x / 2); output x samples the input at u = 2x - 0.5, i.e. between
    two pixels, so the 8 taps sit at +-0.5, 1.5, 2.5, 3.5 and weigh 0.5 * cubic(0.25, 0.75, 1.25, 1.75)."""
    half = np.array([0.8671875, 0.2265625, -0.0703125, -0.0234375]) / 2
    taps = np.concatenate([half[::-1], half])
    assert taps.sum() == pytest.approx(1.0)
    m = resize_matrix(40, 20, 0.5)
    np.testing.assert_allclose(m[10, 17:25], taps, atol=1e-12)  # output 11 (1-based) centres on 21.5
    assert np.count_nonzero(m[10]) == 8
    # an impulse at input 21 (0-based) reaches output o with the weight at distance 21 - (2o + 0.5)
    img = torch.zeros(1, 1, 40, dtype=torch.float64)
    img[..., 21] = 1.0
    out = imresize(img.float().expand(1, 8, 40).contiguous(), 0.5, quantize_8bit=False)
    np.testing.assert_allclose(out[0, 0, 8:13].double().numpy(), [0.0, half[2], half[0], half[1], half[3]], atol=1e-7)


def test_rows_sum_to_one_and_borders_mirror():
    for n_in, n_out, s in ((64, 16, 0.25), (17, 5, 0.25), (16, 64, 4.0)):
        m = resize_matrix(n_in, n_out, s)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    # symmetric padding: the first output of a x4 shrink reads input index 0 twice over (j and -j-1)
    m = resize_matrix(64, 16, 0.25)
    direct = 0.25 * cubic(0.25 * (2.5 - np.arange(1, 65)))  # u = 1/0.25 + 0.5 * (1 - 4) = 2.5 (1-based)
    mirrored = 0.25 * cubic(0.25 * (2.5 - np.arange(0, -12, -1)))  # taps at 0, -1, ... map to 1, 2, ...
    expected = direct.copy()
    expected[:12] += mirrored
    np.testing.assert_allclose(m[0], expected / expected.sum(), atol=1e-12)


def test_constant_stays_constant_and_linear_ramps_are_reproduced():
    const = torch.full((3, 36, 52), 77 / 255)
    assert torch.equal(imresize(const, 0.25), torch.full((3, 9, 13), 77 / 255))
    assert torch.equal(imresize(imresize(const, 0.25), 4), torch.full((3, 36, 52), 77 / 255))
    # a symmetric, normalised kernel reproduces a linear ramp exactly away from the borders:
    # output column x (0-based) samples the input at 4x + 1.5
    cols = torch.arange(64, dtype=torch.float64)
    ramp = (0.2 + 0.01 * cols).expand(1, 16, 64).float()
    out = imresize(ramp, 0.25, quantize_8bit=False)[0, 0]
    expected = 0.2 + 0.01 * (4 * torch.arange(16, dtype=torch.float64) + 1.5)
    torch.testing.assert_close(out[2:-2].double(), expected[2:-2], atol=1e-6, rtol=0)


def test_interior_matches_antialiased_bicubic_and_output_is_8bit():
    """torch's antialiased bicubic uses the same widened a = -0.5 kernel but renormalises at the border
    instead of mirroring: the two agree inside, differ at the border."""
    img = torch.rand((3, 64, 80), generator=torch.Generator().manual_seed(0))
    ours = imresize(img, 0.25, quantize_8bit=False)
    ref = F.interpolate(img[None].double(), size=(16, 20), mode="bicubic", antialias=True)[0]
    assert ours.shape == (3, 16, 20)
    assert (ours - ref)[:, 3:-3, 3:-3].abs().max() < 1e-6
    assert (ours - ref).abs().max() > 1e-3
    q = imresize(img, 0.25)
    assert torch.equal(q, (q * 255).round() / 255)
    assert (q - ours.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6
