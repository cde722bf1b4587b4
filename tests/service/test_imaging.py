"""Faithful I/O, pixel-checked: an identity backend isolates decode -> tensor -> encode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from service.imaging.decode import decode_image, orient
from service.imaging.png16 import read_png16, write_png16
from tests.service.conftest import LiveApp, decode, encode, gradient

pytestmark = pytest.mark.anyio
PNG = {"content-type": "image/png"}


async def restore(live: LiveApp, data: bytes, task: str = "deblur", query: str = "") -> bytes:
    r = await live.client.post(f"/restore/{task}{query}", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    return r.content


def noisy_rgba(w: int = 24, h: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 4), dtype=np.uint8)


async def test_rgb_round_trip_is_pixel_exact(identity_live: LiveApp) -> None:
    src = noisy_rgba()[..., :3]
    out = decode(await restore(identity_live, encode(Image.fromarray(src))))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), src)


async def test_alpha_is_carried_through(identity_live: LiveApp) -> None:
    src = noisy_rgba()
    out = decode(await restore(identity_live, encode(Image.fromarray(src))))
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out), src)


async def test_alpha_is_resized_for_sr(identity_live: LiveApp) -> None:
    src = noisy_rgba(10, 6)
    src[..., 3] = 255
    src[:3, :, 3] = 0  # top half transparent
    out = np.asarray(decode(await restore(identity_live, encode(Image.fromarray(src)), "sr-x4")))
    assert out.shape == (24, 40, 4)
    assert np.array_equal(out[..., :3], src[..., :3].repeat(4, 0).repeat(4, 1))  # identity SR: nearest
    assert out[:10, :, 3].max() == 0 and out[14:, :, 3].min() == 255  # alpha resized, edges kept


async def test_grey_stays_grey(identity_live: LiveApp) -> None:
    src = noisy_rgba()[..., 0]
    out = decode(await restore(identity_live, encode(Image.fromarray(src))))
    assert out.mode == "L" and np.array_equal(np.asarray(out), src)
    la = np.stack([src, 255 - src], axis=2)
    out = decode(await restore(identity_live, encode(Image.fromarray(la))))
    assert out.mode == "LA" and np.array_equal(np.asarray(out), la)


async def test_sixteen_bit_grey_png_and_tiff(identity_live: LiveApp) -> None:
    src = np.random.default_rng(1).integers(0, 65536, (16, 24), dtype=np.uint16)
    for fmt in ("PNG", "TIFF"):
        out = decode(await restore(identity_live, encode(Image.fromarray(src), fmt)))
        assert out.mode.startswith("I;16") and out.format == "PNG"
        assert np.array_equal(np.asarray(out).astype(np.uint16), src), fmt


async def test_sixteen_bit_colour_png_and_tiff(identity_live: LiveApp) -> None:
    import tifffile

    src = np.random.default_rng(2).integers(0, 65536, (16, 24, 4), dtype=np.uint16)
    png16 = write_png16(src, None, 6)
    arr, grey, alpha = read_png16(await restore(identity_live, png16))
    assert (grey, alpha) == (False, True) and np.array_equal(arr, src)
    buf = io.BytesIO()
    tifffile.imwrite(buf, src[..., :3], photometric="rgb")
    arr, grey, alpha = read_png16(await restore(identity_live, buf.getvalue()))
    assert (grey, alpha) == (False, False) and np.array_equal(arr, src[..., :3])


async def test_icc_profile_is_carried_to_every_format(identity_live: LiveApp) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(gradient(), "PNG", icc_profile=icc)
    for fmt in ("png", "jpeg", "webp"):
        out = decode(await restore(identity_live, data, query=f"?format={fmt}"))
        assert out.info.get("icc_profile") == icc, fmt
    sixteen = write_png16(np.full((8, 8, 3), 1234, np.uint16), icc, 6)
    assert decode(await restore(identity_live, sixteen)).info.get("icc_profile") == icc


@pytest.mark.parametrize("orientation", range(1, 9))
async def test_exif_orientation_is_applied(identity_live: LiveApp, orientation: int) -> None:
    src = Image.fromarray(noisy_rgba(24, 16)[..., :3])
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(src, "PNG", exif=exif.tobytes())
    expected = ImageOps.exif_transpose(decode(data))
    out = decode(await restore(identity_live, data))
    assert np.array_equal(np.asarray(out), np.asarray(expected.convert("RGB")))


async def test_palette_with_transparency_and_cmyk(identity_live: LiveApp) -> None:
    pal = gradient(24, 16).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    data = encode(pal, "PNG", transparency=0)
    out = decode(await restore(identity_live, data))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out), np.asarray(decode(data).convert("RGBA")))
    cmyk = gradient(24, 16).convert("CMYK")
    out = decode(await restore(identity_live, encode(cmyk, "TIFF")))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(cmyk.convert("RGB")))


async def test_one_bit_and_bmp_and_webp_inputs(identity_live: LiveApp) -> None:
    bits = gradient(24, 16).convert("1")
    out = decode(await restore(identity_live, encode(bits)))
    assert out.mode == "L" and np.array_equal(np.asarray(out), np.asarray(bits.convert("L")))
    src = gradient(24, 16)
    assert np.array_equal(np.asarray(decode(await restore(identity_live, encode(src, "BMP")))), np.asarray(src))
    lossless = encode(src, "WEBP", lossless=True)
    assert np.array_equal(np.asarray(decode(await restore(identity_live, lossless))), np.asarray(src))


async def test_jpeg_drops_alpha_and_defaults(identity_live: LiveApp) -> None:
    out = decode(await restore(identity_live, encode(Image.fromarray(noisy_rgba())), query="?format=jpeg&quality=95"))
    assert out.format == "JPEG" and out.mode == "RGB"


async def test_degenerate_sizes(identity_live: LiveApp) -> None:
    for size in ((1, 1), (1, 8000), (8000, 1)):  # a longer 1-pixel strip costs too much (`test_cost.py`)
        src = gradient(*size)
        out = decode(await restore(identity_live, encode(src)))
        assert out.size == size and np.array_equal(np.asarray(out), np.asarray(src))


async def test_inpaint_mask_threshold_and_alpha(identity_live: LiveApp) -> None:
    """Identity inpainting returns the masked input: holes are 0, so the hole map is readable."""
    src = np.full((16, 16, 3), 200, np.uint8)
    lum = np.zeros((16, 16), np.uint8)
    lum[:, 8:] = 128  # exactly the documented threshold (0.5 -> 128/255 rounds to a hole)
    lum[:, 12:] = 127  # just below: not a hole
    rgba_mask = np.dstack([np.full((16, 16, 3), 255, np.uint8), np.zeros((16, 16), np.uint8)])
    rgba_mask[:4, :, 3] = 255  # white and opaque only in the top rows
    for mask, expect in ((lum, np.s_[:, 8:12]), (rgba_mask, np.s_[:4, :])):
        files = {
            "image": ("a.png", encode(Image.fromarray(src)), "image/png"),
            "mask": ("m.png", encode(Image.fromarray(mask)), "image/png"),
        }
        r = await identity_live.client.post("/restore/inpaint", files=files)
        out = np.asarray(decode(r.content))[..., 0]
        holes = np.zeros((16, 16), bool)
        holes[expect] = True
        assert np.array_equal(out == 0, holes)


def test_orient_matches_pillow() -> None:
    base = Image.fromarray(noisy_rgba(5, 3)[..., :3])
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        im = decode(encode(base, "PNG", exif=exif.tobytes()))
        assert np.array_equal(orient(np.asarray(base), orientation), np.asarray(ImageOps.exif_transpose(im)))


def test_bomb_header_is_rejected_before_decoding() -> None:
    from service.errors import ServiceError
    from tests.service.test_api import png_with_header_size

    with pytest.raises(ServiceError) as err:
        decode_image(png_with_header_size(50_000, 50_000), max_pixels=4096 * 4096)
    assert err.value.code == "too_many_pixels"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_float_image_with_a_non_finite_sample_is_refused_at_decode(bad: float) -> None:
    """Old: `np.clip` kept NaN, so the image reached the model and came back non-finite (a 500 for its
    whole batch)."""
    from service.errors import ServiceError

    values = np.linspace(0, 1, 24 * 16, dtype=np.float32).reshape(16, 24)
    values[5, 7] = bad
    data = encode(Image.fromarray(values, mode="F"), "TIFF")
    with pytest.raises(ServiceError) as err:
        decode_image(data, max_pixels=10**6)
    assert err.value.code == "non_finite_image"
    assert "1 NaN or infinite" in err.value.message
    values[5, 7] = 2.0  # finite values outside [0, 1] are still clipped, not refused
    image = decode_image(encode(Image.fromarray(values, mode="F"), "TIFF"), max_pixels=10**6)
    assert image.rgb[5, 7, 0] == 1.0 and np.isfinite(image.rgb).all()
