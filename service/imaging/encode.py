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


def choose_format(requested: str | None, source_format: str) -> str:
    """`png` unless asked otherwise; JPEG inputs (Pillow's format name of the upload) default to JPEG."""
    if requested:
        return requested
    return "jpeg" if source_format == "JPEG" else "png"


def _resize_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if alpha.shape == (h, w):
        return alpha
    resized = Image.fromarray(alpha.astype(np.float32)).resize((w, h), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized, dtype=np.float32), 0, 1)


ROWS_PER_CHUNK = 256  # quantise in row blocks: float temporaries stay small even at 4096 x 16384


def _quantise_into(out: np.ndarray, x: np.ndarray, depth: int) -> None:
    top = 65535 if depth == 16 else 255
    for r in range(0, x.shape[0], ROWS_PER_CHUNK):
        block = np.clip(x[r : r + ROWS_PER_CHUNK], 0, 1) * top
        out[r : r + ROWS_PER_CHUNK] = np.rint(block, out=block)


def _pixels(rgb: np.ndarray, source: DecodedImage, keep_alpha: bool, depth: int) -> np.ndarray:
    """(H, W, planes) integer pixels: grey or RGB, plus alpha when kept."""
    h, w = rgb.shape[:2]
    colour = 1 if source.gray else 3
    out = np.empty((h, w, colour + int(keep_alpha)), dtype=np.uint16 if depth == 16 else np.uint8)
    for r in range(0, h, ROWS_PER_CHUNK):
        rows = rgb[r : r + ROWS_PER_CHUNK]
        _quantise_into(out[r : r + ROWS_PER_CHUNK, :, :colour], luma(rows)[..., None] if source.gray else rows, depth)
    if keep_alpha:
        assert source.alpha is not None
        _quantise_into(out[..., colour], _resize_alpha(source.alpha, (h, w)), depth)
    return out


def encode_image(
    rgb: np.ndarray, source: DecodedImage, fmt: str, *, quality: int | None = None, png_level: int = 3
) -> tuple[bytes, str]:
    """(bytes, content type) for an (H, W, 3) float result."""
    keep_alpha = source.alpha is not None and fmt != "jpeg"
    depth = 16 if source.bit_depth == 16 and fmt == "png" else 8
    pixels = _pixels(rgb, source, keep_alpha, depth)
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
