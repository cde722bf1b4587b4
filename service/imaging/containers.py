"""Structural limits read from the raw bytes before Pillow parses anything (microseconds, no decoding).

Why these exist next to the time-budgeted decoder: each of them turns a known slow or lying file into
a precise answer at once, instead of a worker burning its whole budget on it.

- JPEG: a progressive file may repeat its scans; libjpeg re-walks every coefficient block per scan,
  so a 2 MB file of 160,000 tiny scans decodes for minutes. Real encoders write at most a few dozen.
- TIFF: a second IFD means a multi-page file, and Pillow counts pages by walking the whole chain
  (quadratic in its length): one pointer tells us enough. Its strip (or tile) offset and byte-count
  tags are read by Pillow into one Python tuple each and then one decoder tile per entry: a 32 MB file
  declaring 4 million one-byte strips over a 16 x 16 image took 12 s and 1.1 GB to open and 29 s to
  decode. The first IFD's entry table (at most 65,535 entries of 12 bytes) gives their counts.
- PNG: an APNG's `acTL` frame count is a claim; the `fcTL` chunks are the frames. A file whose chunks
  hold more than one frame is multi-frame whatever `acTL` says.
- Floods: a 32 MB JPEG of 8 million empty APP0 segments, or a PNG of 2.7 million empty private chunks,
  is a valid 16 x 16 image whose container costs a parser one Python-level step per element (Pillow
  reads JPEG segments up to the first scan and PNG chunks one by one): half a minute of CPU and a
  gigabyte of segment records. Real files have a few dozen such elements, so each container gets a cap
  on them, checked by a walk that stops at the cap (milliseconds whatever the file's size).
"""

from __future__ import annotations

import struct

from service.errors import ServiceError

MAX_JPEG_SCANS = 64
"""Default cap on scans (SOS markers) in one JPEG; libjpeg's progressive scripts use 6-10."""
MAX_JPEG_MARKERS = 4096
"""Markers (segments, standalone markers, fill bytes) before a JPEG's first scan. A camera file has a few
dozen; an ICC profile split over the most APP2 segments the format allows takes 255."""
MAX_PNG_CHUNKS = 65536
"""Chunks in one PNG, IDAT included (encoders write IDATs of 8-64 KiB: a 32 MiB file has about 4,000)."""
MAX_PNG_ANCILLARY = 4096
"""Chunks other than IDAT in one PNG (a real file has a handful of text, colour and time chunks)."""
MAX_WEBP_CHUNKS = 1024
"""RIFF chunks in one WebP (a still image has at most six; animations are refused anyway)."""
MAX_TIFF_BLOCKS = 65536
"""Strips or tiles in one TIFF: a 4096 x 4096 image (the default pixel cap) stored one row per strip has
4,096, and in 16 x 16 tiles, the smallest the format allows, 65,536. Writers use 8-64 KiB strips."""
TIFF_BLOCK_TAGS = {273: "strip offsets", 279: "strip byte counts", 324: "tile offsets", 325: "tile byte counts"}


def _multi(what: str, detail: str) -> ServiceError:
    return ServiceError("multi_frame_image" if what == "image" else "bad_mask", f"the {what} {detail}")


def _flood(what: str, fmt: str, detail: str) -> ServiceError:
    code = "decode_too_slow" if what == "image" else "bad_mask"
    return ServiceError(code, f"the {what} is a {fmt} with more than {detail} (a header or chunk flood)")


def count_jpeg_scans(data: bytes, *, what: str = "image", max_markers: int = MAX_JPEG_MARKERS) -> int:
    """An upper bound on the number of scans: the header segments are walked up to the first SOS (at most
    `max_markers` steps, else `ServiceError`), then the SOS markers after it are counted in C (entropy-coded
    data never holds 0xFF 0xDA, since every 0xFF in it is stuffed; a table segment between scans might,
    which only over-counts)."""
    i, n, steps = 2, len(data), 0
    while i + 4 <= n:
        steps += 1
        if steps > max_markers:
            raise _flood(what, "JPEG", f"{max_markers} markers before its first scan")
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
    scans = count_jpeg_scans(data, what=what)
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
    table = first + 2
    available = min(entries, (len(data) - table) // 12)  # a prefix may end inside the table: check what is there
    for tag, _type, count, _value in struct.iter_unpack(order + "HHII", data[table : table + 12 * available]):
        if tag in TIFF_BLOCK_TAGS and count > MAX_TIFF_BLOCKS:
            raise _flood(what, "TIFF", f"{MAX_TIFF_BLOCKS} strips or tiles ({count} {TIFF_BLOCK_TAGS[tag]})")
    pointer = table + 12 * entries
    if pointer + 4 > len(data):
        return
    (following,) = struct.unpack_from(order + "I", data, pointer)
    if following != 0:
        raise _multi(what, "is a TIFF with more than one image file directory (pages); send one page")


def _check_png(data: bytes, what: str) -> None:
    i, n, frames, declared, chunks, ancillary = 8, len(data), 0, None, 0, 0
    while i + 8 <= n:
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise _flood(what, "PNG", f"{MAX_PNG_CHUNKS} chunks")
        length, kind = struct.unpack_from(">I4s", data, i)
        if kind not in (b"IDAT", b"fdAT"):
            ancillary += 1
            if ancillary > MAX_PNG_ANCILLARY:
                if frames > 1:  # an animation long enough to reach the cap is refused as what it is
                    break
                raise _flood(what, "PNG", f"{MAX_PNG_ANCILLARY} chunks besides its image data")
        if kind == b"acTL" and length >= 8:
            (declared,) = struct.unpack_from(">I", data, i + 8)
        elif kind == b"fcTL":
            frames += 1
        elif kind == b"IEND":
            break
        i += 12 + length
    if frames > 1 or (declared is not None and declared > 1):
        raise _multi(what, f"is an animated PNG ({max(frames, declared or 0)} frames); send a single still image")


def _check_webp(data: bytes, what: str) -> None:
    i, n, chunks = 12, len(data), 0
    while i + 8 <= n:
        chunks += 1
        if chunks > MAX_WEBP_CHUNKS:
            raise _flood(what, "WebP", f"{MAX_WEBP_CHUNKS} chunks")
        (length,) = struct.unpack_from("<I", data, i + 4)
        i += 8 + length + (length & 1)


def check_container(data: bytes, fmt: str, *, what: str = "image", max_jpeg_scans: int = MAX_JPEG_SCANS) -> None:
    """Raise `ServiceError` for structures refused before decoding (see the module docstring)."""
    if fmt == "JPEG":
        _check_jpeg(data, what, max_jpeg_scans)
    elif fmt == "TIFF":
        _check_tiff(data, what)
    elif fmt == "PNG":
        _check_png(data, what)
    elif fmt == "WEBP":
        _check_webp(data, what)
