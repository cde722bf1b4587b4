"""Validate and decode an upload into float RGB (+ alpha) and the facts needed to write it back.

Two passes. `read_header` (cheap, in the server process): allow-listed signature -> structural
limits on the raw bytes (`containers`) -> header only (`Image.open` is lazy) -> one frame -> input
and output pixel caps and the ICC profile size -> EXIF orientation. `decode_pixels` (costly, in a
budgeted worker process, see `service.intake.decoding`) decodes into native-depth arrays, which
`to_float` turns into the model's float input. Nothing is decoded for a file that the header
already disqualifies, so a tiny file declaring 50,000 x 50,000 pixels costs microseconds.

Mode rules (deterministic, documented in README): 1/L/I;16/I/F stay grey; LA/RGBA/PA and
palettes with transparency keep their alpha; palettes, CMYK and YCbCr become RGB (CMYK by
Pillow's fixed formula, and its CMYK ICC profile is then dropped); 16-bit PNG/TIFF stay 16-bit.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.errors import ServiceError, describe_exception
from service.imaging.containers import MAX_JPEG_SCANS, check_container
from service.imaging.formats import ALLOWED_FORMATS, sniff_format

MAX_ICC_BYTES = 1 << 20
"""Largest ICC profile carried (real profiles are a few kB to a few hundred kB; it is copied into the output)."""

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


@dataclass(frozen=True)
class DecodeLimits:
    """The caps one upload is checked against (from settings and the task's scale)."""

    max_pixels: int
    scale: int = 1
    max_output_pixels: int | None = None
    max_jpeg_scans: int = MAX_JPEG_SCANS
    max_icc_bytes: int = MAX_ICC_BYTES

    @property
    def output_cap(self) -> int:
        return self.max_output_pixels or self.max_pixels * self.scale * self.scale


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before any pixel is decoded (EXIF orientation is not read here: for a PNG
    Pillow would decode the whole image to find an `eXIf` chunk after the pixels)."""

    format: str
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) as stored (an EXIF rotation may swap them in the decoded image)."""
        return self.height, self.width

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass
class RawPixels:
    """Decoded pixels at their native depth (what a decode worker sends back: 1/4 of float32 for 8-bit)."""

    base: np.ndarray
    """(H, W, 1|3) uint8, uint16 or float32, EXIF orientation applied."""
    alpha: np.ndarray | None
    gray: bool
    bit_depth: int
    icc: bytes | None
    format: str
    peak: float
    """The value of full intensity in `base` and `alpha` (255, 65535 or 1.0)."""


def _bad(what: str) -> str:
    return "undecodable_image" if what == "image" else "bad_mask"


def _open(data: bytes, what: str, limits: DecodeLimits) -> tuple[Image.Image, str]:
    if not data:
        raise ServiceError("missing_image" if what == "image" else "bad_mask", f"the {what} is empty")
    fmt = sniff_format(data)
    if fmt is None:
        code = "unsupported_format" if what == "image" else "bad_mask"
        raise ServiceError(code, f"the {what} is not one of {', '.join(ALLOWED_FORMATS)} (checked from its bytes)")
    check_container(data, fmt, what=what, max_jpeg_scans=limits.max_jpeg_scans)
    try:
        return Image.open(io.BytesIO(data), formats=[fmt]), fmt
    except Image.DecompressionBombError as exc:
        raise ServiceError("too_many_pixels", f"the {what} declares too many pixels ({exc})") from None
    except Exception as exc:  # any parser failure on untrusted bytes is the file's fault, never a 500
        raise ServiceError(_bad(what), f"the {what} header is not a valid {fmt} ({describe_exception(exc)})") from None


def _check_header(im: Image.Image, what: str, limits: DecodeLimits) -> None:
    if getattr(im, "n_frames", 1) > 1:
        code = "multi_frame_image" if what == "image" else "bad_mask"
        raise ServiceError(code, f"the {what} has {im.n_frames} frames; send a single still image")
    w, h = im.size
    if w * h > limits.max_pixels:
        raise ServiceError(
            "too_many_pixels", f"the {what} has {w}x{h} = {w * h} pixels; the cap is {limits.max_pixels}"
        )
    scale = limits.scale
    if w * h * scale * scale > limits.output_cap:
        raise ServiceError(
            "output_too_large",
            f"{w}x{h} x{scale} would give {w * h * scale * scale} output pixels; the cap is {limits.output_cap}",
        )
    icc = im.info.get("icc_profile") or b""
    if len(icc) > limits.max_icc_bytes:
        raise ServiceError(
            "icc_profile_too_large",
            f"the {what}'s ICC profile has {len(icc)} bytes; the cap is {limits.max_icc_bytes}",
        )


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def read_header(data: bytes, limits: DecodeLimits, what: str = "image") -> ImageHeader:
    """Every check that needs no pixels; raises `ServiceError` with the precise code."""
    im, fmt = _open(data, what, limits)
    try:
        _check_header(im, what, limits)
        w, h = im.size
        return ImageHeader(fmt, w, h)
    except ServiceError:
        raise
    except Image.DecompressionBombError as exc:
        raise ServiceError("too_many_pixels", f"the {what} declares too many pixels ({exc})") from None
    except Exception as exc:
        raise ServiceError(_bad(what), f"the {what} header is corrupt ({describe_exception(exc)})") from None
    finally:
        im.close()


def _rawmode(im: Image.Image) -> str:
    if not im.tile:
        return ""
    args = im.tile[0].args
    return args if isinstance(args, str) else str(args[0]) if args else ""


def _finite_samples(arr: np.ndarray, what: str) -> np.ndarray:
    """Float samples clipped to [0, 1]; NaN or infinity is refused (`np.clip` keeps NaN, which would
    reach the model and make its whole output non-finite)."""
    bad = np.size(arr) - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ServiceError("non_finite_image", f"the {what} holds {bad} NaN or infinite sample(s)")
    return np.clip(arr, 0, 1, out=arr if arr.flags.writeable else None)


def _to_arrays(
    im: Image.Image, data: bytes, fmt: str, wide: bool, what: str = "image"
) -> tuple[np.ndarray, np.ndarray | None, bool, int]:
    """(grey-or-rgb native array (H, W, 1|3), alpha, grey, depth) for every supported mode."""
    mode = im.mode
    if wide:
        arr, grey, has_alpha = _read_wide(data, fmt, im.size)
        planes = 1 if grey else 3
        return arr[..., :planes], (arr[..., planes] if has_alpha else None), grey, 16
    im.load()
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)[..., None], None, True, 16
    if mode == "I":
        return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)[..., None], None, True, 16
    if mode == "F":
        return _finite_samples(np.asarray(im, dtype=np.float32), what)[..., None], None, True, 16
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"))[..., None], None, True, 8
    if mode in ("LA", "La"):
        a = np.asarray(im.convert("LA"))
        return a[..., :1], a[..., 1], True, 8
    has_alpha = mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info)
    target = "RGBA" if has_alpha else "RGB"
    a = np.asarray(im if im.mode == target else im.convert(target))
    return a[..., :3], (a[..., 3] if has_alpha else None), False, 8


def _read_wide(data: bytes, fmt: str, size: tuple[int, int]) -> tuple[np.ndarray, bool, bool]:
    """16-bit colour (or grey+alpha) files, which Pillow would narrow to 8 bits."""
    if fmt == "PNG":
        from service.imaging.png16 import read_png16

        return read_png16(data)
    import tifffile

    arr = np.asarray(tifffile.imread(io.BytesIO(data)))
    while arr.ndim > 3 and arr.shape[0] == 1:  # e.g. (1, H, W, 3): a leading page or sample axis of one
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[..., None]
    w, h = size
    if arr.ndim != 3 or arr.shape[:2] != (h, w) or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"TIFF pixel data of shape {arr.shape} does not match its {w}x{h} header")
    planes = arr.shape[-1]
    return arr.astype(np.uint16), planes in (1, 2), planes in (2, 4)


PEAK = {8: 255.0, 16: 65535.0}


def decode_pixels(data: bytes, limits: DecodeLimits, what: str = "image") -> RawPixels:
    """Decode an upload at its native depth (the costly part; the header checks run again first)."""
    im, fmt = _open(data, what, limits)
    try:
        _check_header(im, what, limits)
        wide = ";16" in _rawmode(im) and im.mode in ("RGB", "RGBA", "LA")  # before anything loads the data
        orientation = _orientation(im)  # may load the image (a PNG's eXIf chunk can follow its pixels)
        icc = im.info.get("icc_profile") or None
        if im.mode == "CMYK":
            icc = None  # the profile describes CMYK; our output is RGB
        peak = 1.0 if im.mode == "F" else None
        base, alpha, grey, depth = _to_arrays(im, data, fmt, wide, what)
    except ServiceError:
        raise
    except Image.DecompressionBombError as exc:
        raise ServiceError("too_many_pixels", f"the {what} declares too many pixels ({exc})") from None
    except MemoryError:
        raise ServiceError("decode_too_large", f"decoding the {what} exceeds its memory budget") from None
    except Exception as exc:  # truncated data, bad CRCs, odd modes: all the file's fault
        raise ServiceError(_bad(what), f"the {what} is truncated or corrupt ({describe_exception(exc)})") from None
    finally:
        im.close()
    base = orient(base, orientation)
    alpha = orient(alpha, orientation) if alpha is not None else None
    return RawPixels(base, alpha, grey, depth, icc, fmt, peak or PEAK[depth])


def to_float(raw: RawPixels) -> DecodedImage:
    """The model's view: float32 RGB in [0, 1] (grey replicated), alpha in [0, 1]."""
    base = raw.base.astype(np.float32)
    if raw.peak != 1.0:
        base /= raw.peak  # in place: one float copy of a large image, not two
    rgb = np.repeat(base, 3, axis=2) if base.shape[2] == 1 else base
    alpha = None
    if raw.alpha is not None:
        alpha = raw.alpha.astype(np.float32)
        if raw.peak != 1.0:
            alpha /= raw.peak
    return DecodedImage(np.ascontiguousarray(rgb), alpha, raw.gray, raw.bit_depth, raw.icc, raw.format)


def mask_holes(raw: RawPixels, threshold: float) -> np.ndarray:
    """(H, W) uint8 0/1, 1 = hole: luminance (times alpha, if any) >= threshold."""
    value = raw.base.astype(np.float32) / raw.peak
    value = value[..., 0] if value.shape[2] == 1 else luma(value)
    if raw.alpha is not None:
        value = value * (raw.alpha.astype(np.float32) / raw.peak)
    return (value >= threshold - 1e-6).astype(np.uint8)


def check_mask_size(mask: tuple[int, int], image: tuple[int, int]) -> None:
    if mask != image:
        (mh, mw), (h, w) = mask, image
        raise ServiceError("bad_mask", f"the mask is {mw}x{mh} but the image is {w}x{h}")


def check_mask_header(mask: ImageHeader, image: ImageHeader) -> None:
    """From the headers alone: the sides must match up to an EXIF rotation (exactly checked after decoding)."""
    if sorted(mask.size) != sorted(image.size):
        check_mask_size(mask.size, image.size)


def decode_image(
    data: bytes, *, max_pixels: int, scale: int = 1, max_output_pixels: int | None = None, what: str = "image"
) -> DecodedImage:
    """Decode an upload in this process, or raise `ServiceError` with the precise code."""
    return to_float(decode_pixels(data, DecodeLimits(max_pixels, scale, max_output_pixels), what))


def decode_mask(data: bytes, size: tuple[int, int], *, threshold: float, max_pixels: int) -> np.ndarray:
    """(H, W) float32 0/1, 1 = hole, decoded in this process."""
    if not data:
        raise ServiceError("missing_mask", "the mask part is empty")
    limits = DecodeLimits(max_pixels)
    header = read_header(data, limits, "mask")
    if sorted(header.size) != sorted(size):
        check_mask_size(header.size, size)
    holes = mask_holes(decode_pixels(data, limits, "mask"), threshold)
    check_mask_size((int(holes.shape[0]), int(holes.shape[1])), size)
    return holes.astype(np.float32)
