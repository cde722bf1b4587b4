"""Seeded, pure degradations: draw every random parameter once, then apply deterministically.

Every degradation is split into `draw(rng, h, w) -> params` (the only place randomness is used,
from a caller-owned `numpy.random.Generator`) and `apply(gt, params) -> Degraded` (a pure
function). That split is what makes batches reproducible from a seed, lets `--resume` replay the
exact next batch, and lets tests check a degradation without caring about the draw order.

Images are float32 tensors (3, H, W) in [0, 1]. Degraded outputs are quantised to 8 bits, like a
saved image, because that is what the network sees at inference time.

Ids (the `degradation` of a `models.tasks.TaskSpec`): "bicubic", "motion-blur", "lama-masks",
"realesrgan".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from models.inpainting import network_input as network_input  # the one definition; re-exported here

# The 8 Levin et al. (2009) camera-shake kernels ship with the package (training/kernels/README.md).
LEVIN_KERNELS = Path(__file__).resolve().parent / "kernels" / "levin09.npz"


@dataclass
class Degraded:
    """The LQ image (at LQ resolution) and, for inpainting, the hole mask (1, H, W), 1 = hole."""

    lq: torch.Tensor
    mask: torch.Tensor | None = None


class Degradation(Protocol):
    scale: int

    def draw(self, rng: np.random.Generator, h: int, w: int) -> dict[str, Any]: ...

    def apply(self, gt: torch.Tensor, params: dict[str, Any]) -> Degraded: ...


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid and clamp, exactly like writing and re-reading a PNG."""
    return (x.clamp(0, 1) * 255.0).round() / 255.0


def degrade(deg: Degradation, gt: torch.Tensor, rng: np.random.Generator) -> Degraded:
    """Convenience: draw then apply."""
    return deg.apply(gt, deg.draw(rng, gt.shape[-2], gt.shape[-1]))


# --- resampling --------------------------------------------------------------------------------
def bicubic_down(gt: torch.Tensor, scale: int) -> torch.Tensor:
    """The SR degradation: antialiased bicubic to (H/scale, W/scale), on [0,1] floats, 8-bit quantised.

    H and W must be multiples of `scale` (crop first; `mod_crop` does it).
    """
    h, w = gt.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"image {h}x{w} is not a multiple of the scale {scale}; mod-crop it first")
    lq = F.interpolate(gt[None].float(), size=(h // scale, w // scale), mode="bicubic", antialias=True)
    return quantize(lq[0])


def bicubic_up(lq: torch.Tensor, scale: int) -> torch.Tensor:
    """The classic SR baseline: bicubic upscaling (clamped, not quantised)."""
    h, w = lq.shape[-2:]
    return F.interpolate(lq[None], size=(h * scale, w * scale), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def mod_crop(img: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    return img[..., : h - h % multiple, : w - w % multiple]


class Bicubic:
    """`sr` degradation: no randomness at all (draw returns nothing)."""

    def __init__(self, scale: int = 4) -> None:
        self.scale = scale

    def draw(self, rng: np.random.Generator, h: int, w: int) -> dict[str, Any]:
        return {}

    def apply(self, gt: torch.Tensor, params: dict[str, Any]) -> Degraded:
        return Degraded(bicubic_down(gt, self.scale))


# --- blur kernels --------------------------------------------------------------------------------
def convolve(img: torch.Tensor, kernel: np.ndarray | torch.Tensor) -> torch.Tensor:
    """True 2-D convolution of every channel with `kernel` (odd-sized), reflect-padded borders."""
    k = torch.as_tensor(np.ascontiguousarray(kernel), dtype=torch.float32)
    kh, kw = k.shape
    if kh % 2 == 0 or kw % 2 == 0:
        k = F.pad(k, (0, 1 - kw % 2, 0, 1 - kh % 2))
        kh, kw = k.shape
    c = img.shape[0]
    x = img[None].float()
    ph, pw = kh // 2, kw // 2
    mode = "reflect" if ph < img.shape[-2] and pw < img.shape[-1] else "replicate"
    x = F.pad(x, (pw, pw, ph, ph), mode=mode)
    weight = k.flip(0, 1).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, groups=c)[0]


def load_levin_kernels(source: str | Path = LEVIN_KERNELS) -> list[np.ndarray]:
    """The 8 real camera-shake kernels (Levin et al. 2009), sorted k1..k8, each summing to 1. `source`:
    an .npz of them, or a folder of one .npy per kernel."""
    source = Path(source)
    if source.suffix == ".npz":
        with np.load(source, allow_pickle=False) as z:
            arrays = [z[name] for name in sorted(z.files)]
    else:
        arrays = [np.load(f, allow_pickle=False) for f in sorted(source.glob("*.npy"))]
    if not arrays:
        raise FileNotFoundError(f"no kernels in {source}")
    return [k.astype(np.float64) / k.astype(np.float64).sum() for k in arrays]


def dihedral_np(a: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 flips/rotations of a 2-D array (code 0 = identity)."""
    if code & 4:
        a = a.T
    return np.rot90(a, code & 3).copy()


def random_trajectory_kernel(rng: np.random.Generator, size: int, length: float) -> np.ndarray:
    """A camera-shake kernel: a random walk with inertia, rasterised with bilinear splatting.

    Shake paths are smooth (momentum) with occasional jerks; the path is rescaled to `length`
    pixels and centred so that the blur has no net shift.
    """
    n = 96
    vel = rng.normal(size=2)
    vel /= np.linalg.norm(vel) + 1e-8
    pts = np.zeros((n, 2))
    for i in range(1, n):
        accel = rng.normal(scale=0.35, size=2)
        if rng.random() < 0.05:  # an impulsive jerk
            accel += rng.normal(scale=2.0, size=2)
        vel = 0.85 * vel + accel
        pts[i] = pts[i - 1] + vel
    pts -= pts.mean(axis=0)
    extent = np.abs(pts).max() * 2 + 1e-8
    pts *= length / extent
    pts += (size - 1) / 2
    k = np.zeros((size, size))
    for y, x in pts:
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        fy, fx = y - y0, x - x0
        for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
            yy, xx = y0 + dy, x0 + dx
            if 0 <= yy < size and 0 <= xx < size:
                k[yy, xx] += wgt
    return k / k.sum()


def identity_kernel() -> np.ndarray:
    """The 1x1 kernel that leaves an image as it is (a sharp photo)."""
    return np.ones((1, 1))


class MotionBlur:
    """`deblur` degradation: a mixture of what users send, plus Gaussian noise, then 8-bit quantisation.

    Each sample is, with probability `p_identity`, left sharp (identity kernel: the model must learn
    to leave a sharp photo alone); with `p_mild`, shaken mildly (synthetic trajectory of `mild_sizes`
    px); otherwise blurred as before: a (rotated/flipped) real Levin kernel with probability
    `p_real`, else a synthetic trajectory of `kernel_sizes` px. With both new shares at 0 the draws
    (and so every seeded batch) are exactly those of the original two-way mixture.
    """

    scale = 1

    def __init__(
        self,
        p_real: float = 0.3,
        kernel_sizes: tuple[int, int] = (11, 31),
        noise_sigma: tuple[float, float] = (0.0, 3.0 / 255),
        kernel_dir: str | Path = LEVIN_KERNELS,
        p_identity: float = 0.0,
        p_mild: float = 0.0,
        mild_sizes: tuple[int, int] = (3, 9),
    ) -> None:
        if p_identity < 0 or p_mild < 0 or p_identity + p_mild > 1:
            raise ValueError(f"p_identity {p_identity} and p_mild {p_mild} must be >= 0 and sum to <= 1")
        self.p_real = p_real
        self.kernel_sizes = kernel_sizes
        self.noise_sigma = noise_sigma
        self.p_identity = p_identity
        self.p_mild = p_mild
        self.mild_sizes = mild_sizes
        self.real = load_levin_kernels(kernel_dir) if p_real > 0 else []

    @staticmethod
    def _shake(rng: np.random.Generator, sizes: tuple[int, int], min_length: float, margin: float) -> np.ndarray:
        lo, hi = sizes
        size = int(rng.integers(lo // 2, hi // 2 + 1)) * 2 + 1
        return random_trajectory_kernel(rng, size, float(rng.uniform(min_length, max(min_length, size - margin))))

    def draw(self, rng: np.random.Generator, h: int, w: int) -> dict[str, Any]:
        u = rng.random() if self.p_identity + self.p_mild > 0 else 1.0
        if u < self.p_identity:
            kernel = identity_kernel()
        elif u < self.p_identity + self.p_mild:
            kernel = self._shake(rng, self.mild_sizes, 1.0, 1.0)
        elif self.real and rng.random() < self.p_real:
            kernel = dihedral_np(self.real[int(rng.integers(len(self.real)))], int(rng.integers(8)))
        else:
            kernel = self._shake(rng, self.kernel_sizes, 2.0, 2.0)
        return {
            "kernel": kernel,
            "sigma": float(rng.uniform(*self.noise_sigma)),
            "noise_seed": int(rng.integers(2**31)),
        }

    def apply(self, gt: torch.Tensor, params: dict[str, Any]) -> Degraded:
        blurred = convolve(gt, params["kernel"])
        noise = torch.randn(blurred.shape, generator=torch.Generator().manual_seed(params["noise_seed"]))
        return Degraded(quantize(blurred + params["sigma"] * noise))


# --- inpainting masks --------------------------------------------------------------------------
class LamaMasks:
    """LaMa "mixed" hole masks (1 = hole): irregular thick strokes or boxes, equal odds.

    Official sizes are for 256x256 images; for other sizes every length is scaled by
    min(H, W) / 256 so that a training patch sees the same relative hole geometry.
    `coverage` re-draws (from the same generator) until the hole fraction lies in the range.
    """

    scale = 1

    def __init__(self, coverage: tuple[float, float] = (0.0, 1.0), max_tries: int = 100) -> None:
        self.coverage = coverage
        self.max_tries = max_tries

    @staticmethod
    def _strokes(rng: np.random.Generator, h: int, w: int, f: float) -> list[tuple[str, tuple[int, ...]]]:
        shapes = []
        for stroke in range(1 + int(rng.integers(6))):
            y, x = int(rng.integers(h)), int(rng.integers(w))
            for _ in range(1 + int(rng.integers(5))):
                angle = 0.01 + int(rng.integers(4))
                if stroke % 2 == 0:
                    angle = 2 * math.pi - angle
                length = (10 + int(rng.integers(200))) * f
                width = max(1, round((5 + int(rng.integers(100))) * f))
                y1 = int(np.clip(y + length * math.sin(angle), 0, h - 1))
                x1 = int(np.clip(x + length * math.cos(angle), 0, w - 1))
                shapes.append(("line", (x, y, x1, y1, width)))
                y, x = y1, x1
        return shapes

    @staticmethod
    def _boxes(rng: np.random.Generator, h: int, w: int, f: float) -> list[tuple[str, tuple[int, ...]]]:
        margin = max(1, round(10 * f))
        lo = max(1, round(30 * f))
        shapes = []
        for _ in range(1 + int(rng.integers(4))):
            bh = int(rng.integers(lo, max(lo, min(round(150 * f), h - 2 * margin)) + 1))
            bw = int(rng.integers(lo, max(lo, min(round(150 * f), w - 2 * margin)) + 1))
            y = int(rng.integers(margin, max(margin, h - margin - bh) + 1))
            x = int(rng.integers(margin, max(margin, w - margin - bw) + 1))
            shapes.append(("box", (x, y, bw, bh)))
        return shapes

    @staticmethod
    def render(shapes: list[tuple[str, tuple[int, ...]]], h: int, w: int) -> np.ndarray:
        import cv2

        mask = np.zeros((h, w), np.float32)
        for kind, s in shapes:
            if kind == "line":
                x0, y0, x1, y1, width = s
                cv2.line(mask, (x0, y0), (x1, y1), 1.0, int(width))
            else:
                x, y, bw, bh = s
                mask[y : y + bh, x : x + bw] = 1.0
        return mask

    def draw(self, rng: np.random.Generator, h: int, w: int) -> dict[str, Any]:
        f = min(h, w) / 256
        lo, hi = self.coverage
        for _ in range(self.max_tries):
            gen = self._strokes if rng.random() < 0.5 else self._boxes
            shapes = gen(rng, h, w, f)
            cov = float(self.render(shapes, h, w).mean())
            if lo <= cov <= hi:
                return {"shapes": shapes}
        raise RuntimeError(f"no mask with coverage in {self.coverage} after {self.max_tries} draws")

    def apply(self, gt: torch.Tensor, params: dict[str, Any]) -> Degraded:
        h, w = gt.shape[-2:]
        mask = torch.from_numpy(self.render(params["shapes"], h, w))[None]
        return Degraded(gt * (1 - mask), mask)


class FolderMasks:
    """Masks from a folder of images (`hole_is_white=False` for RePaint-style keep masks), randomly
    flipped/rotated and resized (nearest) to the patch."""

    scale = 1

    def __init__(self, directory: str | Path, hole_is_white: bool = True) -> None:
        from training.imageio import list_images, read_mask

        self.masks = [read_mask(p, hole_is_white) for p in list_images([directory])]
        if not self.masks:
            raise FileNotFoundError(f"no mask images in {directory}")

    def draw(self, rng: np.random.Generator, h: int, w: int) -> dict[str, Any]:
        return {"index": int(rng.integers(len(self.masks))), "dihedral": int(rng.integers(8))}

    def apply(self, gt: torch.Tensor, params: dict[str, Any]) -> Degraded:
        h, w = gt.shape[-2:]
        m = torch.from_numpy(dihedral_np(self.masks[params["index"]], params["dihedral"]))[None, None]
        m = (F.interpolate(m, size=(h, w), mode="nearest")[0] > 0.5).float()
        return Degraded(gt * (1 - m), m)


def make_degradation(name: str, scale: int = 1, **options: Any) -> Degradation:
    """Map a task's degradation id to its implementation (the only such mapping)."""
    if name == "bicubic":
        return Bicubic(scale)
    if name == "motion-blur":
        return MotionBlur(**options)
    if name == "lama-masks":
        if options.get("mask_dir"):
            return FolderMasks(options["mask_dir"], options.get("hole_is_white", True))
        return LamaMasks(**{k: v for k, v in options.items() if k in ("coverage",)})
    if name == "realesrgan":
        from training.realesrgan import RealESRGAN

        return RealESRGAN(scale)
    raise KeyError(f"unknown degradation {name!r}; known: bicubic, motion-blur, lama-masks, realesrgan")
