"""Real-ESRGAN second-order degradation (`realsr` family), following the reference's description.

Two rounds of blur -> resize -> noise -> JPEG, then a final resize + sinc filter in random order
with the last JPEG. Everything random is drawn in `draw` (kernels, coins, factors, noise seeds,
JPEG qualities); `apply` is pure. Differences from the official GPU pipeline, on purpose: the
per-batch coins are drawn per sample (we degrade in the DataLoader workers, one sample at a
time) and there is no 180-sample mixing queue (per-sample draws already mix degradations).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.degradations import Degraded, convolve, quantize

KERNEL_FAMILIES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
KERNEL_PROBS = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
RESIZE_MODES = ("area", "bilinear", "bicubic")
MAX_KERNEL = 21


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(size) - (size - 1) / 2
    return np.meshgrid(r, r, indexing="xy")


def _quadratic_form(size: int, sx: float, sy: float, theta: float) -> np.ndarray:
    """x^T Sigma^-1 x on the kernel grid for a rotated anisotropic covariance."""
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([sx**2, sy**2]) @ rot.T
    inv = np.linalg.inv(cov)
    x, y = _grid(size)
    return inv[0, 0] * x * x + (inv[0, 1] + inv[1, 0]) * x * y + inv[1, 1] * y * y


def sinc_kernel(size: int, omega_c: float) -> np.ndarray:
    """Circular low-pass filter (2-D jinc), normalised, zero-padded to MAX_KERNEL."""
    from scipy.special import j1

    x, y = _grid(size)
    r = np.hypot(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega_c * j1(omega_c * r) / (2 * np.pi * r)
    k[r == 0] = omega_c**2 / (4 * np.pi)
    return pad_kernel(k / k.sum())


def pad_kernel(k: np.ndarray, size: int = MAX_KERNEL) -> np.ndarray:
    p = (size - k.shape[0]) // 2
    return np.pad(k, p) if p > 0 else k


def random_kernel(rng: np.random.Generator, sigma: tuple[float, float], sinc_prob: float) -> np.ndarray:
    """One first/second-order blur kernel: sinc with `sinc_prob`, else one of the 6 families."""
    size = int(rng.choice(np.arange(7, 22, 2)))
    if rng.random() < sinc_prob:
        omega = rng.uniform(math.pi / 3, math.pi) if size < 13 else rng.uniform(math.pi / 5, math.pi)
        return sinc_kernel(size, omega)
    family = KERNEL_FAMILIES[int(rng.choice(len(KERNEL_FAMILIES), p=KERNEL_PROBS))]
    sx = rng.uniform(*sigma)
    if family.endswith("iso") and not family.endswith("aniso"):
        sy, theta = sx, 0.0
    else:
        sy, theta = rng.uniform(*sigma), rng.uniform(-math.pi, math.pi)
    q = _quadratic_form(size, sx, sy, theta)
    if family.startswith("generalized"):
        k = np.exp(-0.5 * np.power(q, rng.uniform(0.5, 4)))
    elif family.startswith("plateau"):
        k = 1.0 / (np.power(q, rng.uniform(1, 2)) + 1)
    else:
        k = np.exp(-0.5 * q)
    return pad_kernel(k / k.sum())


def _resize(img: torch.Tensor, h: int, w: int, mode: str) -> torch.Tensor:
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(img[None], size=(max(1, h), max(1, w)), mode=mode, **kwargs)[0]


def _jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    import cv2

    arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()[:, :, ::-1]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(arr), [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(dec)).permute(2, 0, 1).float() / 255.0


def _noise(img: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    gen = np.random.default_rng(p["seed"])
    arr = img.numpy().astype(np.float64)
    if p["kind"] == "gaussian":
        shape = (1, *arr.shape[1:]) if p["grey"] else arr.shape
        noise = gen.normal(scale=p["sigma"] / 255.0, size=shape)
    else:
        src = arr.mean(axis=0, keepdims=True) if p["grey"] else arr
        src = np.clip(src, 0, 1)
        vals = 2 ** np.ceil(np.log2(max(2, len(np.unique((src * 255).round())))))
        noise = (gen.poisson(src * vals) / vals - src) * p["scale"]
    return (img + torch.from_numpy(noise).float()).clamp(0, 1)


class RealESRGAN:
    """Second-order degradation at ×1/×2/×4 (LQ = GT size / scale)."""

    def __init__(self, scale: int = 4) -> None:
        self.scale = scale

    @staticmethod
    def _noise_params(rng: np.random.Generator, sigma: tuple[float, float], poisson: tuple[float, float]) -> dict:
        gaussian = rng.random() < 0.5
        return {
            "kind": "gaussian" if gaussian else "poisson",
            "sigma": float(rng.uniform(*sigma)),
            "scale": float(rng.uniform(*poisson)),
            "grey": bool(rng.random() < 0.4),
            "seed": int(rng.integers(2**31)),
        }

    @staticmethod
    def _resize_params(rng: np.random.Generator, probs: tuple[float, float, float], rng_range: tuple[float, float]):
        kind = int(rng.choice(3, p=probs))
        factor = (rng.uniform(1, rng_range[1]), rng.uniform(rng_range[0], 1), 1.0)[kind]
        return float(factor), RESIZE_MODES[int(rng.integers(3))]

    def draw(self, rng: np.random.Generator, h: int, w: int) -> dict[str, Any]:
        size = int(rng.choice(np.arange(7, 22, 2)))
        omega = rng.uniform(math.pi / 3, math.pi) if size < 13 else rng.uniform(math.pi / 5, math.pi)
        return {
            "kernel1": random_kernel(rng, (0.2, 3.0), 0.1),
            "resize1": self._resize_params(rng, (0.2, 0.7, 0.1), (0.15, 1.5)),
            "noise1": self._noise_params(rng, (1, 30), (0.05, 3)),
            "jpeg1": int(rng.integers(30, 96)),
            "second_blur": bool(rng.random() < 0.8),
            "kernel2": random_kernel(rng, (0.2, 1.5), 0.1),
            "resize2": self._resize_params(rng, (0.3, 0.4, 0.3), (0.3, 1.2)),
            "noise2": self._noise_params(rng, (1, 25), (0.05, 2.5)),
            "resize_first": bool(rng.random() < 0.5),
            "final_mode": RESIZE_MODES[int(rng.integers(3))],
            "final_sinc": sinc_kernel(size, omega) if rng.random() < 0.8 else None,
            "jpeg2": int(rng.integers(30, 96)),
        }

    def apply(self, gt: torch.Tensor, p: dict[str, Any]) -> Degraded:
        h, w = gt.shape[-2:]
        s = self.scale
        x = convolve(gt, p["kernel1"])
        f, mode = p["resize1"]
        x = _resize(x, int(h * f), int(w * f), mode)
        x = _jpeg(_noise(x, p["noise1"]), p["jpeg1"])
        if p["second_blur"]:
            x = convolve(x, p["kernel2"])
        f, mode = p["resize2"]
        x = _resize(x, int(h / s * f), int(w / s * f), mode)
        x = _noise(x, p["noise2"])

        def final(y: torch.Tensor) -> torch.Tensor:
            y = _resize(y, h // s, w // s, p["final_mode"])
            return convolve(y, p["final_sinc"]) if p["final_sinc"] is not None else y

        x = _jpeg(final(x), p["jpeg2"]) if p["resize_first"] else final(_jpeg(x, p["jpeg2"]))
        return Degraded(quantize(x))
