"""Write a restored image back the way it came in: depth, greyness, alpha and ICC profile.

The model restores colour only. Alpha is carried through from the input (resized with a bicubic
filter for super-resolution); grey inputs come back grey (ITU-R 601 luma of the restored RGB);
16-bit inputs come back as 16-bit PNG; the ICC profile is attached to every output format that
can hold one. JPEG cannot hold alpha, so `format=jpeg` drops it (documented). Quantisation is
round-half-to-even of x * (2^depth - 1), so the same float result always gives the same bytes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.imaging.decode import DecodedImage, luma
from service.imaging.formats import OUTPUT_FORMATS

DEFAULT_QUALITY = 90


def choose_format(requested: str | None, source: DecodedImage) -> str:
    """`png` unless asked otherwise; JPEG inputs default to JPEG."""
    if requested:
        return requested
    return "jpeg" if source.format == "JPEG" else "png"


def _resize_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if alpha.shape == (h, w):
        return alpha
    resized = Image.fromarray(alpha.astype(np.float32)).resize((w, h), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized, dtype=np.float32), 0, 1)


def _quantise(x: np.ndarray, depth: int) -> np.ndarray:
    top = 65535 if depth == 16 else 255
    return np.rint(np.clip(x, 0, 1) * top).astype(np.uint16 if depth == 16 else np.uint8)


def encode_image(
    rgb: np.ndarray, source: DecodedImage, fmt: str, *, quality: int | None = None, png_level: int = 3
) -> tuple[bytes, str]:
    """(bytes, content type) for an (H, W, 3) float result."""
    h, w = rgb.shape[:2]
    planes = [luma(rgb)[..., None]] if source.gray else [rgb]
    alpha = source.alpha
    keep_alpha = alpha is not None and fmt != "jpeg"
    if keep_alpha:
        assert alpha is not None
        planes.append(_resize_alpha(alpha, (h, w))[..., None])
    stacked = np.concatenate(planes, axis=2)
    depth = 16 if source.bit_depth == 16 and fmt == "png" else 8
    pixels = _quantise(stacked, depth)
    buf = io.BytesIO()
    icc = source.icc
    if depth == 16:
        from service.imaging.png16 import write_png16

        if pixels.shape[2] == 1:
            Image.fromarray(pixels[..., 0]).save(buf, "PNG", compress_level=png_level, icc_profile=icc)
            return buf.getvalue(), OUTPUT_FORMATS[fmt]
        return write_png16(pixels, icc, png_level), OUTPUT_FORMATS[fmt]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels)
    extra = {"icc_profile": icc} if icc else {}
    if fmt == "png":
        image.save(buf, "PNG", compress_level=png_level, **extra)
    elif fmt == "jpeg":
        image.save(buf, "JPEG", quality=quality or DEFAULT_QUALITY, **extra)
    else:
        if mode in ("L", "LA"):
            image = image.convert("RGBA" if mode == "LA" else "RGB")
        image.save(buf, "WEBP", quality=quality or DEFAULT_QUALITY, method=4, **extra)
    return buf.getvalue(), OUTPUT_FORMATS[fmt]
