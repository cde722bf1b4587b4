"""Validate and decode an upload into float RGB (+ alpha) and the facts needed to write it back.

Order of checks, cheapest and safest first: allow-listed signature -> header only (`Image.open`
is lazy) -> one frame -> input and output pixel caps from the header size -> full decode ->
EXIF orientation. Nothing is decoded for a file that the header already disqualifies, so a tiny
file declaring 50,000 x 50,000 pixels costs microseconds.

Mode rules (deterministic, documented in README): 1/L/I;16/I/F stay grey; LA/RGBA/PA and
palettes with transparency keep their alpha; palettes, CMYK and YCbCr become RGB (CMYK by
Pillow's fixed formula, and its CMYK ICC profile is then dropped); 16-bit PNG/TIFF stay 16-bit.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.errors import ServiceError
from service.imaging.formats import ALLOWED_FORMATS, sniff_format

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class DecodedImage:
    rgb: np.ndarray
    """(H, W, 3) float32 in [0, 1] (grey images are replicated to 3 channels)."""
    alpha: np.ndarray | None
    """(H, W) float32 in [0, 1], or None."""
    gray: bool
    bit_depth: int
    """8 or 16: the depth written back (PNG)."""
    icc: bytes | None
    format: str

    def __post_init__(self) -> None:
        self._size = (int(self.rgb.shape[0]), int(self.rgb.shape[1]))

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def take_pixels(self) -> np.ndarray:
        """Hand the RGB array over (e.g. to become the model input) and drop our reference to it."""
        rgb, self.rgb = self.rgb, np.empty((0, 0, 3), np.float32)
        return rgb


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, the weights Pillow's convert('L') uses."""
    return rgb @ _LUMA


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1-8 to an (H, W, ...) array (same result as ImageOps.exif_transpose)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr


def _open(data: bytes, what: str) -> tuple[Image.Image, str]:
    if not data:
        raise ServiceError("missing_image" if what == "image" else "bad_mask", f"the {what} is empty")
    fmt = sniff_format(data)
    if fmt is None:
        code = "unsupported_format" if what == "image" else "bad_mask"
        raise ServiceError(code, f"the {what} is not one of {', '.join(ALLOWED_FORMATS)} (checked from its bytes)")
    try:
        return Image.open(io.BytesIO(data), formats=[fmt]), fmt
    except Image.DecompressionBombError as exc:
        raise ServiceError("too_many_pixels", f"the {what} declares too many pixels ({exc})") from None
    except Exception as exc:  # any parser failure on untrusted bytes is the file's fault, never a 500
        code = "undecodable_image" if what == "image" else "bad_mask"
        raise ServiceError(code, f"the {what} header is not a valid {fmt} ({type(exc).__name__}: {exc})") from None


def _check_header(im: Image.Image, what: str, max_pixels: int, scale: int, max_output_pixels: int) -> None:
    if getattr(im, "n_frames", 1) > 1:
        code = "multi_frame_image" if what == "image" else "bad_mask"
        raise ServiceError(code, f"the {what} has {im.n_frames} frames; send a single still image")
    w, h = im.size
    if w * h > max_pixels:
        raise ServiceError("too_many_pixels", f"the {what} has {w}x{h} = {w * h} pixels; the cap is {max_pixels}")
    if w * h * scale * scale > max_output_pixels:
        raise ServiceError(
            "output_too_large",
            f"{w}x{h} x{scale} would give {w * h * scale * scale} output pixels; the cap is {max_output_pixels}",
        )


def _rawmode(im: Image.Image) -> str:
    if not im.tile:
        return ""
    args = im.tile[0].args
    return args if isinstance(args, str) else str(args[0]) if args else ""


def _to_arrays(im: Image.Image, data: bytes, fmt: str, wide: bool) -> tuple[np.ndarray, np.ndarray | None, bool, int]:
    """(rgb-or-grey float array (H, W, 1|3), alpha, grey, depth) for every supported mode."""
    mode = im.mode
    if wide:
        arr, grey, has_alpha = _read_wide(data, fmt)
        f = arr.astype(np.float32) / 65535.0
        planes = 1 if grey else 3
        return f[..., :planes], (f[..., planes] if has_alpha else None), grey, 16
    im.load()
    if mode.startswith("I;16"):
        return (np.asarray(im).astype(np.float32) / 65535.0)[..., None], None, True, 16
    if mode == "I":
        return (np.clip(np.asarray(im), 0, 65535).astype(np.float32) / 65535.0)[..., None], None, True, 16
    if mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0, 1)[..., None], None, True, 16
    if mode in ("1", "L"):
        return (np.asarray(im.convert("L"), dtype=np.float32) / 255.0)[..., None], None, True, 8
    if mode in ("LA", "La"):
        a = np.asarray(im.convert("LA"), dtype=np.float32) / 255.0
        return a[..., :1], a[..., 1], True, 8
    has_alpha = mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info)
    target = "RGBA" if has_alpha else "RGB"
    rgb = im if im.mode == target else im.convert(target)
    a = np.asarray(rgb, dtype=np.float32)
    a /= 255.0  # in place: one float copy of a large image, not two
    return a[..., :3], (a[..., 3] if has_alpha else None), False, 8


def _read_wide(data: bytes, fmt: str) -> tuple[np.ndarray, bool, bool]:
    """16-bit colour (or grey+alpha) files, which Pillow would narrow to 8 bits."""
    if fmt == "PNG":
        from service.imaging.png16 import read_png16

        return read_png16(data)
    import tifffile

    arr = np.asarray(tifffile.imread(io.BytesIO(data)))
    if arr.ndim == 2:
        arr = arr[..., None]
    planes = arr.shape[-1]
    return arr.astype(np.uint16), planes in (1, 2), planes in (2, 4)


def decode_image(
    data: bytes, *, max_pixels: int, scale: int = 1, max_output_pixels: int | None = None, what: str = "image"
) -> DecodedImage:
    """Decode an upload, or raise `ServiceError` with the precise code."""
    im, fmt = _open(data, what)
    try:
        _check_header(im, what, max_pixels, scale, max_output_pixels or max_pixels * scale * scale)
        wide = ";16" in _rawmode(im) and im.mode in ("RGB", "RGBA", "LA")  # before anything loads the data
        icc = im.info.get("icc_profile") or None
        if im.mode == "CMYK":
            icc = None  # the profile describes CMYK; our output is RGB
        try:
            orientation = int(im.getexif().get(0x0112, 1))
        except Exception:
            orientation = 1
        base, alpha, grey, depth = _to_arrays(im, data, fmt, wide)
    except ServiceError:
        raise
    except Image.DecompressionBombError as exc:
        raise ServiceError("too_many_pixels", f"the {what} declares too many pixels ({exc})") from None
    except Exception as exc:  # truncated data, bad CRCs, odd modes: all the file's fault
        code = "undecodable_image" if what == "image" else "bad_mask"
        raise ServiceError(code, f"the {what} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    finally:
        im.close()
    base, alpha = orient(base, orientation), (orient(alpha, orientation) if alpha is not None else None)
    rgb = np.repeat(base, 3, axis=2) if base.shape[2] == 1 else base
    return DecodedImage(np.ascontiguousarray(rgb, dtype=np.float32), alpha, grey, depth, icc, fmt)


def decode_mask(data: bytes, size: tuple[int, int], *, threshold: float, max_pixels: int) -> np.ndarray:
    """(H, W) float32 0/1, 1 = hole: luminance (times alpha, if any) >= threshold."""
    if not data:
        raise ServiceError("missing_mask", "the mask part is empty")
    mask = decode_image(data, max_pixels=max_pixels, what="mask")
    if mask.size != size:
        (mh, mw), (h, w) = mask.size, size
        raise ServiceError("bad_mask", f"the mask is {mw}x{mh} but the image is {w}x{h}")
    value = luma(mask.rgb)
    if mask.alpha is not None:
        value = value * mask.alpha
    return (value >= threshold - 1e-6).astype(np.float32)
