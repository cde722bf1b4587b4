"""PSNR and SSIM as the restoration literature reports them (BasicSR definitions).

Inputs are float (3, H, W) images in [0, 1]; they are first rounded to the 8-bit grid (what a
saved PNG holds), then measured on the 0-255 scale, on RGB or on the BT.601 luma (Y, 16-235),
with `border` pixels cropped on every side (the SR convention: border = scale).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _prep(img: torch.Tensor, border: int, y_channel: bool) -> torch.Tensor:
    x = (img.detach().double().clamp(0, 1) * 255).round()
    if y_channel:
        x = (16.0 + 65.481 * x[0] / 255 + 128.553 * x[1] / 255 + 24.966 * x[2] / 255)[None]
    if border:
        x = x[..., border:-border, border:-border]
    return x


def psnr(out: torch.Tensor, gt: torch.Tensor, border: int = 0, y_channel: bool = False) -> float:
    a, b = _prep(out, border, y_channel), _prep(gt, border, y_channel)
    mse = torch.mean((a - b) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(out: torch.Tensor, gt: torch.Tensor, border: int = 0, y_channel: bool = False) -> float:
    """Mean SSIM (11x11 Gaussian, sigma 1.5, valid region), averaged over channels."""
    a, b = _prep(out, border, y_channel)[:, None], _prep(gt, border, y_channel)[:, None]
    w = _gaussian_window()[None, None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    var_a = F.conv2d(a * a, w) - mu_a**2
    var_b = F.conv2d(b * b, w) - mu_b**2
    cov = F.conv2d(a * b, w) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean().item()


def all_metrics(out: torch.Tensor, gt: torch.Tensor, border: int = 0) -> dict[str, float]:
    return {
        "psnr": psnr(out, gt, border),
        "ssim": ssim(out, gt, border),
        "psnr_y": psnr(out, gt, border, y_channel=True),
        "ssim_y": ssim(out, gt, border, y_channel=True),
    }
