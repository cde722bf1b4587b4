"""Image files <-> float tensors. One place, so every loader agrees on modes and ranges.

Images are read as RGB (greyscale and RGBA are converted; the shared corpus has both) into
float32 (3, H, W) tensors in [0, 1]. Masks are read as a binary float (H, W) array with 1 = hole.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folders: Iterable[str | Path]) -> list[Path]:
    """All image files directly inside the folders, sorted by name within each folder."""
    out: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"not a folder: {folder}")
        out += sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return out


def read_uint8(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float() / 255.0


def read_image(path: str | Path) -> torch.Tensor:
    return to_tensor(read_uint8(path))


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8 (rounded, as a saved PNG)."""
    return (img.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def write_image(path: str | Path, img: torch.Tensor) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(img)).save(path)


def read_mask(path: str | Path, hole_is_white: bool = True) -> np.ndarray:
    """(H, W) float32, 1 = hole. Anti-aliased edges are binarised at half intensity."""
    from PIL import Image

    with Image.open(path) as im:
        grey = np.asarray(im.convert("L"), dtype=np.float32)
    hole = grey > 127.5
    return (hole if hole_is_white else ~hole).astype(np.float32)
