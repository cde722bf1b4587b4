"""The format allow-list, enforced from the file's magic bytes before any decoder runs.

The declared Content-Type is not trusted: the signature decides, and Pillow is then told to try
only that one plugin (`Image.open(..., formats=[...])`), so bytes that merely claim to be a PNG
never reach the PSD, EPS, ICO, SVG-adjacent or FITS parsers.
"""

from __future__ import annotations

from service.params import OUTPUT_FORMATS

__all__ = ["ALLOWED_FORMATS", "MAX_SIDE", "OUTPUT_FORMATS", "sniff_format"]

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")
MAX_SIDE = {"png": 2**31 - 1, "jpeg": 65_535, "webp": 16_383}
"""Largest width or height each output format can encode."""


def sniff_format(data: bytes) -> str | None:
    """Pillow format name for an allowed signature, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data.startswith(b"BM"):
        return "BMP"
    return None
