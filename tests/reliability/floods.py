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
"""

from __future__ import annotations

import io
import struct
import zlib

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
