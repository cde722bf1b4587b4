"""The work a decode worker process does (imported once by the fork server: no torch, no app).

Header checks run first (again) so a worker never trusts its caller; the mask is thresholded here,
so only one byte per pixel travels back for it. `header` reads the header of an upload whose header
lies beyond the prefix admission may parse (`service.intake.headers`).
"""

from __future__ import annotations

import numpy as np
import png  # noqa: F401  (pypng and tifffile: imported once in the fork server, not per worker)
import tifffile  # noqa: F401
from PIL import Image

from service.imaging.decode import DecodeLimits, RawPixels, check_mask_size, decode_pixels, mask_holes, read_header


def decode_upload(
    image: bytes, mask: bytes | None, limits: DecodeLimits, mask_limits: DecodeLimits, threshold: float
) -> tuple[RawPixels, np.ndarray | None]:
    """(the image's pixels, the mask's 0/1 holes or None)."""
    pixels = decode_pixels(image, limits, "image")
    if mask is None:
        return pixels, None
    holes = mask_holes(decode_pixels(mask, mask_limits, "mask"), threshold)
    check_mask_size(holes.shape[:2], pixels.base.shape[:2])  # both after their EXIF orientation
    return pixels, holes


JOBS = {"upload": decode_upload, "header": read_header}
Image.init()  # every Pillow plugin registered before the fork: a worker's first file opens as fast as its last
