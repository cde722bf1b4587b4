"""Structural limits read from the raw bytes before Pillow parses anything (microseconds, no decoding).

Why these exist next to the time-budgeted decoder: each of them turns a known slow or lying file into
a precise answer at once, instead of a worker burning its whole budget on it.

- JPEG: a progressive file may repeat its scans; libjpeg re-walks every coefficient block per scan,
  so a 2 MB file of 160,000 tiny scans decodes for minutes. Real encoders write at most a few dozen.
- TIFF: a second IFD means a multi-page file, and Pillow counts pages by walking the whole chain
  (quadratic in its length): one pointer tells us enough.
- PNG: an APNG's `acTL` frame count is a claim; the `fcTL` chunks are the frames. A file whose chunks
  hold more than one frame is multi-frame whatever `acTL` says.
"""

from __future__ import annotations

import struct

from service.errors import ServiceError

MAX_JPEG_SCANS = 64
"""Default cap on scans (SOS markers) in one JPEG; libjpeg's progressive scripts use 6-10."""


def _multi(what: str, detail: str) -> ServiceError:
    return ServiceError("multi_frame_image" if what == "image" else "bad_mask", f"the {what} {detail}")


def count_jpeg_scans(data: bytes) -> int:
    """An upper bound on the number of scans: the header segments are walked up to the first SOS, then
    the SOS markers after it are counted in C (entropy-coded data never holds 0xFF 0xDA, since every
    0xFF in it is stuffed; a table segment between scans might, which only over-counts)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return 0  # not a marker where one must be: the decoder will report the damage
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xD9:
            return 0
        if marker == 0xDA:
            return 1 + data.count(b"\xff\xda", i + 2)
        (length,) = struct.unpack_from(">H", data, i + 2)
        i += 2 + length
    return 0


def _check_jpeg(data: bytes, what: str, max_scans: int) -> None:
    scans = count_jpeg_scans(data)
    if scans > max_scans:
        raise ServiceError(
            "decode_too_slow", f"the {what} is a JPEG with more than {max_scans} scans (each one re-decodes the image)"
        )


def _check_tiff(data: bytes, what: str) -> None:
    if len(data) < 8:
        return  # Pillow reports the truncation
    order = "<" if data[:2] == b"II" else ">"
    (first,) = struct.unpack_from(order + "I", data, 4)
    if first + 2 > len(data):
        return
    (entries,) = struct.unpack_from(order + "H", data, first)
    pointer = first + 2 + 12 * entries
    if pointer + 4 > len(data):
        return
    (following,) = struct.unpack_from(order + "I", data, pointer)
    if following != 0:
        raise _multi(what, "is a TIFF with more than one image file directory (pages); send one page")


def _check_png(data: bytes, what: str) -> None:
    i, n, frames, declared = 8, len(data), 0, None
    while i + 8 <= n:
        length, kind = struct.unpack_from(">I4s", data, i)
        if kind == b"acTL" and length >= 8:
            (declared,) = struct.unpack_from(">I", data, i + 8)
        elif kind == b"fcTL":
            frames += 1
        elif kind == b"IEND":
            break
        i += 12 + length
    if frames > 1 or (declared is not None and declared > 1):
        raise _multi(what, f"is an animated PNG ({max(frames, declared or 0)} frames); send a single still image")


def check_container(data: bytes, fmt: str, *, what: str = "image", max_jpeg_scans: int = MAX_JPEG_SCANS) -> None:
    """Raise `ServiceError` for structures refused before decoding (see the module docstring)."""
    if fmt == "JPEG":
        _check_jpeg(data, what, max_jpeg_scans)
    elif fmt == "TIFF":
        _check_tiff(data, what)
    elif fmt == "PNG":
        _check_png(data, what)
