"""MATLAB-compatible bicubic `imresize`, written from its definition, for the standard SR protocol.

The SR literature's low-resolution test images are made by MATLAB's `imresize(img, 1/4, 'bicubic')`
on 8-bit images. Its definition:

* the cubic convolution kernel with a = -0.5 (Keys), support |x| <= 2;
* when shrinking by a factor s < 1 the kernel is widened by 1/s (antialiasing): h(x) = s * cubic(s x),
  support |x| <= 2/s;
* output pixel x (1-based) samples the input at u = x / s + (1 - 1/s) / 2 (pixel centres aligned);
* it takes the ceil(kernel width) + 2 input pixels from floor(u - width / 2) on, weights them by h(u - j)
  and normalises the weights to sum 1;
* indices outside the image are mirrored symmetrically (1, 2, ... reflected as ..., 2, 1, 1, 2, ...);
* one dimension at a time (rows first when both scales are equal), in double precision;
* an 8-bit input gives an 8-bit output, rounded half away from zero.

Our own training degradation (`degradations.bicubic_down`, torch's antialiased bicubic) uses the same
kernel but renormalises the weights at the border instead of mirroring, and that is the difference
between the two protocols' border pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch

CUBIC_A = -0.5


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `bicubic`)."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    near = (CUBIC_A + 2) * ax3 - (CUBIC_A + 3) * ax2 + 1
    far = CUBIC_A * ax3 - 5 * CUBIC_A * ax2 + 8 * CUBIC_A * ax - 4 * CUBIC_A
    return np.where(ax <= 1, near, np.where(ax <= 2, far, 0.0))


def resize_matrix(in_len: int, out_len: int, scale: float) -> np.ndarray:
    """The (out_len, in_len) matrix that resizes one dimension (weights of the mirrored taps summed)."""
    antialias = scale < 1
    width = 4.0 / scale if antialias else 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based input indices
    dist = u[:, None] - idx
    w = scale * cubic(scale * dist) if antialias else cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    src = mirror[(idx.astype(np.int64) - 1) % (2 * in_len)]
    mat = np.zeros((out_len, in_len))
    np.add.at(mat, (np.repeat(np.arange(out_len), taps), src.ravel()), w.ravel())
    return mat


def imresize(img: torch.Tensor, scale: float, quantize_8bit: bool = True) -> torch.Tensor:
    """Resize a (C, H, W) image in [0, 1] by `scale` (e.g. 1/4 or 4) as MATLAB's bicubic `imresize`.

    The output size is ceil(H * scale) x ceil(W * scale). With `quantize_8bit` (the input is an 8-bit
    image, as in the protocol) the result is rounded to the 8-bit grid like MATLAB's uint8 output.
    """
    _, h, w = img.shape
    out_h, out_w = math.ceil(h * scale), math.ceil(w * scale)
    x = img.detach().double().cpu().numpy() * 255.0
    rows = resize_matrix(h, out_h, scale)
    cols = resize_matrix(w, out_w, scale)
    out = np.einsum("oh,chw->cow", rows, x)
    out = np.einsum("pw,cow->cop", cols, out)
    if quantize_8bit:
        out = np.floor(np.clip(out, 0, 255) + 0.5)
    return torch.from_numpy(out / 255.0).float()
