"""Untrusted bytes are parsed only where a budget applies; every refusal is counted (in-process, identity models).

- Header and chunk floods (valid 16 x 16 images padded with empty segments or chunks): old, admission
  walked all of them in the server process, outside every budget (2 MB: 2-3 s each on the test machine,
  then 200; 32 MB: 35 s and +1 GB). Now 422 `decode_too_slow` from the container caps, in milliseconds.
- Admission reads a bounded prefix: Pillow in the server process never sees more than
  `service.intake.headers.PREFIX_BYTES`; a header beyond it is read by a decode worker.
- Accounting: 503 `busy`, 503 `draining` on arrival and deadline 504s were never counted in
  `diffir_rejected_total`.
"""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from service.errors import ServiceError
from service.imaging.containers import (
    MAX_JPEG_MARKERS,
    MAX_PNG_ANCILLARY,
    MAX_TIFF_BLOCKS,
    MAX_WEBP_CHUNKS,
    check_container,
)
from service.imaging.decode import DecodeLimits
from service.intake.headers import PREFIX_BYTES, prefix_header
from service.settings import Settings
from tests.reliability.floods import FLOODS, jpeg_app0_flood, tiff_strip_flood
from tests.reliability.test_request_path import assert_error, sample
from tests.service.conftest import decode, encode, gradient, identity_backends, start_app

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]
FLOOD_BYTES = 2_000_000


def settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"warmup_size": 0, "max_wait_ms": 1, "tasks": {"deblur": {}}}
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(FLOODS))
def test_each_flood_is_a_valid_image_that_the_caps_refuse(name: str) -> None:
    """The generators make real images (so the refusal is the cap's, not a decoder error), and a file just under
    each cap still passes: real files are nowhere near them."""
    make, _ = FLOODS[name]
    small = make(2000)
    Image.open(io.BytesIO(small)).load()  # decodes
    fmt = Image.open(io.BytesIO(small)).format
    check_container(small, fmt)
    with pytest.raises(ServiceError) as err:
        check_container(make(FLOOD_BYTES), fmt)
    assert err.value.code == "decode_too_slow"
    assert "flood" in err.value.message


def test_the_caps_sit_far_above_real_files() -> None:
    assert MAX_JPEG_MARKERS >= 1024 and MAX_PNG_ANCILLARY >= 1024 and MAX_WEBP_CHUNKS >= 64
    check_container(jpeg_app0_flood(4 * (MAX_JPEG_MARKERS - 16)), "JPEG")  # just under the cap: accepted
    assert MAX_TIFF_BLOCKS >= 4096 * 4096 // (16 * 16)  # the pixel cap in the smallest tiles the format allows
    check_container(tiff_strip_flood(8 * MAX_TIFF_BLOCKS), "TIFF")  # just under the cap (the header's bytes)


async def test_floods_are_refused_in_milliseconds_and_the_service_stays_quick() -> None:
    """Old: each 2 MB flood was walked by admission in the server process (2-3 s here) and answered 200."""
    async for live in start_app(settings(), backends=identity_backends()):
        c = live.client
        for name, (make, media) in FLOODS.items():
            data = make(FLOOD_BYTES)
            started = time.perf_counter()
            r = await c.post("/restore/deblur", content=data, headers={"content-type": media})
            seconds = time.perf_counter() - started
            assert_error(r, 422, "decode_too_slow")
            assert seconds < 1.0, (name, seconds)
        small = await c.post("/restore/deblur", content=encode(gradient(32, 32)), headers={"content-type": "image/png"})
        assert small.status_code == 200


async def test_admission_parses_only_a_bounded_prefix(monkeypatch) -> None:
    """A JPEG whose 600 kB ICC profile sits before its frame header: the server process opens at most
    PREFIX_BYTES of it; a decode worker reads the header and decodes it (200, profile kept). Old: Pillow
    parsed the whole upload in the server process."""
    seen: list[int] = []
    real_open = Image.open

    def recording_open(fp, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(fp, io.BytesIO):
            seen.append(len(fp.getbuffer()))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", recording_open)
    data = encode(gradient(24, 16), "JPEG", icc_profile=bytes(range(256)) * 2400)
    assert len(data) > PREFIX_BYTES
    assert prefix_header(data, DecodeLimits(1 << 24), "image") is None  # the frame header lies beyond the prefix
    seen.clear()
    async for live in start_app(settings(), backends=identity_backends()):
        r = await live.client.post("/restore/deblur", content=data, headers={"content-type": "image/jpeg"})
        opened = list(seen)
        assert r.status_code == 200, r.text[:300]
        assert len(decode(r.content).info.get("icc_profile", b"")) == 614400
    assert opened, "admission opened nothing in the server process"
    assert max(opened) <= PREFIX_BYTES, opened


async def test_a_prefix_settles_what_the_rest_cannot_undo() -> None:
    """A bomb header (50,000² declared) is refused from the prefix even when the file is larger than it."""
    from tests.reliability.hostile import png_declaring

    bomb = png_declaring(50_000, 50_000) + b"\0" * (PREFIX_BYTES + 10)
    with pytest.raises(ServiceError) as err:
        prefix_header(bomb, DecodeLimits(1 << 24), "image")
    assert err.value.code == "too_many_pixels"


async def test_busy_draining_and_deadline_refusals_are_counted() -> None:
    """Old: 503 `busy` (+0), 503 `draining` on arrival (+0) and deadline 504s during decode (+0) were missing
    from `diffir_rejected_total`."""
    async for live in start_app(settings(max_upload_bytes_in_flight=4096), backends=identity_backends()):
        c = live.client
        busy0 = sample((await c.get("/metrics")).text, "diffir_rejected_total", task="deblur", reason="busy")
        big = encode(Image.effect_noise((64, 64), 64).convert("RGB"))
        assert len(big) > 4096
        for _ in range(2):
            assert_error(
                await c.post("/restore/deblur", content=big, headers={"content-type": "image/png"}), 503, "busy"
            )
        text = (await c.get("/metrics")).text
        assert sample(text, "diffir_rejected_total", task="deblur", reason="busy") == busy0 + 2

    # a deadline shorter than the decode: 504 before the batcher ever sees it
    async for live in start_app(settings(), backends=identity_backends()):
        c = live.client
        noise = Image.effect_noise((1024, 1024), 64).convert("RGB")
        data = encode(noise, "PNG", compress_level=0)
        text = (await c.get("/metrics")).text
        deadline0 = sample(text, "diffir_rejected_total", task="deblur", reason="deadline")
        draining0 = sample(text, "diffir_rejected_total", task="deblur", reason="draining")
        answers = []
        for _ in range(5):
            r = await c.post(
                "/restore/deblur", params={"timeout": "0.01"}, content=data, headers={"content-type": "image/png"}
            )
            answers.append(r.status_code)
        assert answers == [504] * 5, answers  # never 422: a decode cut short by the deadline is a deadline miss
        text = (await c.get("/metrics")).text
        assert sample(text, "diffir_rejected_total", task="deblur", reason="deadline") == deadline0 + 5

        live.state.set_draining()
        r = await c.post("/restore/deblur", content=encode(gradient(16, 16)), headers={"content-type": "image/png"})
        assert_error(r, 503, "draining")
        text = (await c.get("/metrics")).text
        assert sample(text, "diffir_rejected_total", task="deblur", reason="draining") == draining0 + 1
