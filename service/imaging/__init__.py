"""Faithful image I/O: validate and decode uploads, encode results (see decode.py, encode.py)."""

from service.imaging.decode import DecodedImage, decode_image, decode_mask
from service.imaging.encode import choose_format, encode_image
from service.imaging.formats import ALLOWED_FORMATS, sniff_format

__all__ = [
    "ALLOWED_FORMATS",
    "DecodedImage",
    "choose_format",
    "decode_image",
    "decode_mask",
    "encode_image",
    "sniff_format",
]
