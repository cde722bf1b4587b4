"""16-bit colour PNG in and out (Pillow keeps at most 8 bits per colour channel), plus iCCP.

pypng (pure Python) does the codec work; here we only shape arrays and add the ICC profile
chunk that pypng does not write.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np


def read_png16(data: bytes) -> tuple[np.ndarray, bool, bool]:
    """(H, W, planes) uint16 array, greyscale flag, alpha flag (palette/tRNS expanded)."""
    import png

    width, height, rows, info = png.Reader(bytes=data).asDirect()
    planes = info["planes"]
    arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, planes)
    if info["bitdepth"] != 16:
        arr = arr * (65535 // ((1 << info["bitdepth"]) - 1))
    return arr.astype(np.uint16), bool(info["greyscale"]), bool(info["alpha"])


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_png16(arr: np.ndarray, icc: bytes | None, level: int) -> bytes:
    """Encode (H, W, planes) uint16 (1 = grey, 2 = grey+alpha, 3 = RGB, 4 = RGBA) as 16-bit PNG."""
    import png

    height, width, planes = arr.shape
    writer = png.Writer(
        width, height, greyscale=planes in (1, 2), alpha=planes in (2, 4), bitdepth=16, compression=level
    )
    buf = io.BytesIO()
    writer.write(buf, arr.reshape(height, width * planes))
    out = buf.getvalue()
    if icc:
        ihdr_end = 8 + 25
        iccp = _chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc))
        out = out[:ihdr_end] + iccp + out[ihdr_end:]
    return out
