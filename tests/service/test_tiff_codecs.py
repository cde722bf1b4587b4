"""Compressed TIFFs as scanners and cameras write them (LZW, Deflate, Zstandard, JPEG) are restored, 16-bit
ones pixel-exact through the identity backend; tifffile needs `imagecodecs` (a `serve` dependency) for them."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from service.imaging.png16 import read_png16
from tests.service.conftest import LiveApp, decode

pytestmark = pytest.mark.anyio


def tiff(pixels: np.ndarray, compression: str, **options: object) -> bytes:
    buf = io.BytesIO()
    photometric = "rgb" if pixels.ndim == 3 else "minisblack"
    tifffile.imwrite(buf, pixels, photometric=photometric, compression=compression, **options)
    return buf.getvalue()


async def post(live: LiveApp, data: bytes):
    return await live.client.post("/restore/deblur", content=data, headers={"content-type": "image/tiff"})


@pytest.mark.parametrize("compression", ["lzw", "adobe_deflate", "zstd"])
async def test_sixteen_bit_compressed_tiffs_round_trip_exactly(identity_live: LiveApp, compression: str) -> None:
    rgb = np.random.default_rng(3).integers(0, 65536, (24, 40, 3), dtype=np.uint16)
    grey = rgb[..., 0].copy()
    for src in (rgb, grey):
        data = tiff(src, compression, predictor=compression != "zstd")
        assert tifffile.TiffFile(io.BytesIO(data)).pages[0].compression.name.lower() == compression
        answer = await post(identity_live, data)
        assert answer.status_code == 200, answer.text
        arr, is_grey, alpha = read_png16(answer.content)  # 16 bits in, 16-bit PNG out
        assert (is_grey, alpha) == (src.ndim == 2, False)
        assert np.array_equal(arr.reshape(src.shape), src), compression


async def test_jpeg_compressed_tiff_is_restored(identity_live: LiveApp) -> None:
    y, x = np.mgrid[0:32, 0:48]
    src = np.stack([x * 5, y * 7, (x + y) * 3], axis=2).astype(np.uint8)
    answer = await post(identity_live, tiff(src, "jpeg"))
    assert answer.status_code == 200, answer.text
    out = np.asarray(decode(answer.content).convert("RGB")).astype(int)
    assert out.shape == src.shape and np.abs(out - src).mean() < 4  # lossy, but this image
