"""Header and chunk floods: small valid images padded with millions of empty structural elements.

Each file is a real, decodable image; only its container is padded, so a parser that walks every
segment or chunk pays for all of them while the pixels stay tiny. Used by the tests (a few MB) and by
`bench.attacks` (up to the 32 MB body cap).

- `jpeg_app0_flood`: empty APP0 segments (`FF E0 00 02`, 4 bytes each) before the frame header.
- `jpeg_restart_flood`: stray restart markers (`FF D0`-`FF D7`, 2 bytes each, no length) before it.
- `png_chunk_flood`: empty private ancillary chunks (`prVt`, 12 bytes each) before the first IDAT.
- `png_idat_flood`: empty IDAT chunks before the real one (admission reads only up to the first IDAT,
  so this one is found by the decode worker's walk of the whole file).
- `webp_chunk_flood`: empty unknown RIFF chunks (8 bytes each) after the bitstream of an extended WebP.
- `tiff_strip_flood`: a 16 x 16 TIFF stored one row per strip that declares far more strips than rows
  (8 bytes each: an offset and a byte count); the extra ones repeat the first row, which Pillow decodes.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image


def _small(fmt: str, side: int = 16, **save: object) -> bytes:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def jpeg_app0_flood(size: int) -> bytes:
    """A 16x16 JPEG with empty APP0 segments inserted after SOI, about `size` bytes in all."""
    jpeg = _small("JPEG", quality=90)
    count = max(0, (size - len(jpeg)) // 4)
    return jpeg[:2] + b"\xff\xe0\x00\x02" * count + jpeg[2:]


def jpeg_restart_flood(size: int) -> bytes:
    """A 16x16 JPEG with stray RST0-RST7 markers (2 bytes each) after SOI, about `size` bytes in all."""
    jpeg = _small("JPEG", quality=90)
    count = max(0, (size - len(jpeg)) // 2)
    markers = bytes(b for i in range(8) for b in (0xFF, 0xD0 + i))
    run = (markers * (count // 8 + 1))[: 2 * count]
    return jpeg[:2] + run + jpeg[2:]


def _chunk(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_chunk_flood(size: int) -> bytes:
    """A 16x16 PNG with empty private chunks between IHDR and the first IDAT, about `size` bytes in all."""
    png = _small("PNG")
    ihdr_end = 8 + 25
    count = max(0, (size - len(png)) // 12)
    return png[:ihdr_end] + _chunk(b"prVt") * count + png[ihdr_end:]


def png_idat_flood(size: int) -> bytes:
    """A 16x16 PNG whose image data is preceded by empty IDAT chunks, about `size` bytes in all."""
    png = _small("PNG")
    ihdr_end = 8 + 25
    count = max(0, (size - len(png)) // 12)
    return png[:ihdr_end] + _chunk(b"IDAT") * count + png[ihdr_end:]


def webp_chunk_flood(size: int) -> bytes:
    """A 16x16 lossless WebP in the extended (VP8X) container followed by empty unknown chunks."""
    simple = _small("WEBP", lossless=True)
    bitstream = simple[12:]  # the VP8L chunk, header included
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (15).to_bytes(3, "little") * 2
    count = max(0, (size - len(simple) - 18) // 8)
    body = b"WEBP" + vp8x + bitstream + b"XYZW\x00\x00\x00\x00" * count
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff_strip_flood(size: int) -> bytes:
    """A 16x16 RGB TIFF of one-row strips, padded with extra strips to about `size` bytes in all."""
    side = 16
    rows = np.random.default_rng(0).integers(0, 256, (side, side * 3), dtype=np.uint8)
    strips = max(side, (size - 200 - rows.size) // 8)
    # (tag, type, count, inline value or the bytes stored after the table); types: 3 SHORT, 4 LONG
    fixed = [
        (256, 3, 1, side), (257, 3, 1, side), (258, 3, 3, struct.pack("<3H", 8, 8, 8)), (259, 3, 1, 1),
        (262, 3, 1, 2), (273, 4, strips, None), (277, 3, 1, 3), (278, 3, 1, 1), (279, 4, strips, None),
    ]  # fmt: skip
    table_end = 8 + 2 + 12 * len(fixed) + 4
    bits_at, pixels_at = table_end, table_end + 6
    offsets_at = pixels_at + rows.size
    counts_at = offsets_at + 4 * strips
    row_offsets = [pixels_at + i * side * 3 for i in range(side)] + [pixels_at] * (strips - side)
    entries = b""
    for tag, kind, count, value in fixed:
        if tag == 258:
            field = struct.pack("<I", bits_at)
        elif tag in (273, 279):
            field = struct.pack("<I", offsets_at if tag == 273 else counts_at)
        else:
            field = struct.pack("<HH", value, 0)
        entries += struct.pack("<HHI", tag, kind, count) + field
    return (
        b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(fixed)) + entries + struct.pack("<I", 0)
        + struct.pack("<3H", 8, 8, 8) + rows.tobytes()
        + struct.pack(f"<{strips}I", *row_offsets) + struct.pack("<I", side * 3) * strips
    )  # fmt: skip


FLOODS: dict[str, tuple[Callable[[int], bytes], str]] = {
    "jpeg-app0": (jpeg_app0_flood, "image/jpeg"),
    "jpeg-restart": (jpeg_restart_flood, "image/jpeg"),
    "png-chunks": (png_chunk_flood, "image/png"),
    "png-idat": (png_idat_flood, "image/png"),
    "webp-chunks": (webp_chunk_flood, "image/webp"),
    "tiff-strips": (tiff_strip_flood, "image/tiff"),
}
"""Each flood by name: its generator (bytes in all -> file) and the media type it is uploaded as."""
