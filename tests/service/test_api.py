"""The HTTP API through httpx's ASGI transport with tiny random-weight models."""

from __future__ import annotations

import asyncio
import gzip
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from models import save_checkpoint
from service.runtime.torch_backend import TorchBackend
from tests.service.conftest import (
    GatedBackend,
    LiveApp,
    SpyGate,
    decode,
    encode,
    gradient,
    make_settings,
    start_app,
    tiny_model,
)

pytestmark = pytest.mark.anyio
PNG = {"content-type": "image/png"}
CPU = torch.device("cpu")


def png_with_header_size(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose IHDR declares (width, height): a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    assert body["message"]
    assert body["request_id"] == response.headers["x-request-id"]


# --- happy paths ---------------------------------------------------------------------------------
async def test_restore_multipart_and_raw_bodies(live: LiveApp) -> None:
    img = encode(gradient(40, 24))
    r = await live.client.post("/restore/deblur", files={"image": ("a.png", img, "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert decode(r.content).size == (40, 24)
    timing = r.headers["server-timing"]
    for stage in ("decode", "queue", "inference", "encode"):
        assert f"{stage};dur=" in timing
    assert len(r.headers["x-request-id"]) >= 8
    raw = await live.client.post("/restore/deblur", content=img, headers=PNG)
    assert raw.status_code == 200 and raw.content == r.content


async def test_sr_output_is_four_times_larger(live: LiveApp) -> None:
    r = await live.client.post("/restore/sr-x4", content=encode(gradient(13, 7)), headers=PNG)
    assert r.status_code == 200
    assert decode(r.content).size == (52, 28)


async def test_inpaint_keeps_known_pixels_exactly(live: LiveApp) -> None:
    import numpy as np

    src = gradient(32, 24)
    mask = Image.new("L", (32, 24), 0)
    mask.paste(255, (8, 8, 20, 16))
    files = {"image": ("a.png", encode(src), "image/png"), "mask": ("m.png", encode(mask), "image/png")}
    r = await live.client.post("/restore/inpaint", files=files)
    assert r.status_code == 200, r.text
    out, ref, holes = np.asarray(decode(r.content)), np.asarray(src), np.asarray(mask) > 127
    assert np.array_equal(out[~holes], ref[~holes])  # official composite: outside the hole is the input


async def queue_depth(live: LiveApp, task: str = "deblur") -> float:
    text = (await live.client.get("/metrics")).text
    return next(float(x.split()[-1]) for x in text.splitlines() if x.startswith(f'diffir_queue_depth{{task="{task}"}}'))


async def one_batch(live: LiveApp, backend: GatedBackend, requests: list[tuple[str, bytes]]) -> list:
    """Send `requests` so that they reach the model as one batch: a first request holds the model
    (the gate), the others queue behind it (seen on the queue-depth gauge), then the gate opens and
    the batcher takes them together. No timing decides the batch."""
    c = live.client
    blocker = asyncio.ensure_future(c.post("/restore/deblur", content=encode(gradient(8, 8)), headers=PNG))
    assert await asyncio.to_thread(backend.entered.wait, 30)
    queued = [asyncio.ensure_future(c.post(url, content=body, headers=PNG)) for url, body in requests]
    for _ in range(3000):
        if await queue_depth(live) == len(requests) or any(q.done() for q in queued):
            break
        await asyncio.sleep(0.01)
    assert await queue_depth(live) == len(requests)
    backend.release.set()
    assert (await blocker).status_code == 200
    return await asyncio.gather(*queued)


def seed_sensitive_checkpoint(folder: Path) -> Path:
    """The tiny deblur model with its IPR denoiser's weights x10: different seeds then move the 8-bit
    output by ~4 levels on average (with the fixture's model the seed changes less than one level)."""
    net = tiny_model("deblur")
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith("denoise."):
                p.mul_(10)
    return save_checkpoint(net, folder / "seedy", {"version": "test-1"})


async def test_each_request_keeps_its_own_seed_inside_a_batch(tmp_path: Path) -> None:
    """One image with seeds 1-4 in one batch of four: each answer is byte-identical to that seed's
    solo request, and different seeds give different images (a service that ignored the seed, or
    used one request's seed for the whole batch, fails here)."""
    checkpoint = seed_sensitive_checkpoint(tmp_path)
    backend = SpyGate(TorchBackend(checkpoint, None, CPU))
    settings = make_settings({"deblur": checkpoint}, max_batch_size=4, max_wait_ms=0, warmup_size=0)
    img = encode(gradient(40, 24))
    async for live in start_app(settings, backends={"deblur": backend}):
        batch = await one_batch(live, backend, [(f"/restore/deblur?seed={s}", img) for s in (1, 2, 3, 4)])
        assert backend.batch_sizes == [1, 4]  # the gate's request, then the four seeds together
        assert [r.headers["x-batch-size"] for r in batch] == ["4"] * 4
        solo = [await live.client.post(f"/restore/deblur?seed={s}", content=img, headers=PNG) for s in (1, 2, 3, 4)]
        assert backend.batch_sizes[2:] == [1, 1, 1, 1]
        seven = await live.client.post("/restore/deblur?seed=7", content=img, headers=PNG)
        eight = await live.client.post("/restore/deblur?seed=8", content=img, headers=PNG)
    assert all(r.status_code == 200 for r in [*batch, *solo, seven, eight])
    assert [r.content for r in batch] == [r.content for r in solo]
    assert len({r.content for r in solo}) == 4  # four seeds, four different images
    assert seven.content != eight.content


async def test_output_formats(live: LiveApp) -> None:
    jpeg_in = encode(gradient(), "JPEG", quality=95)
    r = await live.client.post("/restore/deblur", content=jpeg_in, headers={"content-type": "image/jpeg"})
    assert r.headers["content-type"] == "image/jpeg" and decode(r.content).format == "JPEG"
    r = await live.client.post("/restore/deblur?format=webp&quality=80", content=jpeg_in, headers=PNG)
    assert r.headers["content-type"] == "image/webp" and decode(r.content).format == "WEBP"
    r = await live.client.post("/restore/deblur?format=png", content=jpeg_in, headers=PNG)
    assert decode(r.content).format == "PNG"


async def test_info_endpoints(live: LiveApp) -> None:
    assert (await live.client.get("/healthz")).json() == {"status": "ok"}
    assert (await live.client.get("/readyz")).status_code == 200
    tasks = {t["name"]: t for t in (await live.client.get("/tasks")).json()["tasks"]}
    assert set(tasks) == {"deblur", "sr-x4", "inpaint"}
    sr = tasks["sr-x4"]
    assert sr["scale"] == 4 and sr["backend"] == "torch" and sr["provider"] == "cpu" and sr["version"] == "test-1"
    assert len(sr["sha256"]) == 64 and sr["limits"]["max_input_pixels"] == 4096 * 4096 // 16
    assert tasks["inpaint"]["needs_mask"] is True
    assert (await live.client.get("/openapi.json")).json()["paths"]["/restore/{task}"]["post"]
    assert (await live.client.get("/docs")).status_code == 200


async def test_metrics_names(live: LiveApp) -> None:
    await live.client.post("/restore/deblur", content=encode(gradient()), headers=PNG)
    await live.client.post("/restore/nope", content=b"x", headers=PNG)
    text = (await live.client.get("/metrics")).text
    for name in (
        'diffir_requests_total{code="200",task="deblur"}',
        'diffir_requests_total{code="404",task="_unknown"}',
        "diffir_request_duration_seconds_bucket",
        "diffir_queue_wait_seconds_bucket",
        'diffir_inference_duration_seconds_count{backend="torch",task="deblur"}',
        "diffir_batch_size_bucket",
        'diffir_queue_depth{task="deblur"}',
        "diffir_input_pixels_bucket",
        'diffir_model_info{backend="torch",provider="cpu",task="deblur",variant="tiny-deblur",version="test-1"} 1.0',
        "diffir_ready 1.0",
        "# TYPE diffir_rejected_total counter",
        "# TYPE diffir_disconnected_total counter",
    ):
        assert name in text, name


# --- every error code ----------------------------------------------------------------------------
async def test_client_errors(live: LiveApp) -> None:
    c, img = live.client, encode(gradient())
    assert_error(await c.post("/restore/nope", content=img, headers=PNG), 404, "unknown_task")
    assert_error(await c.get("/nowhere"), 404, "not_found")
    assert_error(await c.get("/restore/deblur"), 405, "method_not_allowed")
    assert_error(await c.post("/restore/deblur", content=b"hello", headers={"content-type": "text/plain"}), 415,
                 "unsupported_media_type")  # fmt: skip
    gz = {"content-type": "image/png", "content-encoding": "gzip"}
    assert_error(await c.post("/restore/deblur", content=gzip.compress(img), headers=gz), 415, "unsupported_encoding")
    assert_error(await c.post("/restore/deblur", content=b"GIF89a" + b"\0" * 30, headers=PNG), 415,
                 "unsupported_format")  # fmt: skip
    assert_error(await c.post("/restore/deblur", content=b"%PDF-1.7 ...", headers=PNG), 415, "unsupported_format")
    assert_error(await c.post("/restore/deblur", content=b"", headers=PNG), 422, "missing_image")
    assert_error(await c.post("/restore/deblur", content=img[: len(img) // 2], headers=PNG), 422, "undecodable_image")
    assert_error(await c.post("/restore/deblur", content=png_with_header_size(50_000, 50_000), headers=PNG), 413,
                 "too_many_pixels")  # fmt: skip


async def test_multipart_errors(live: LiveApp) -> None:
    c, img = live.client, encode(gradient())
    part = ("a.png", img, "image/png")
    assert_error(await c.post("/restore/deblur", files={"picture": part}), 422, "unexpected_field")
    assert_error(await c.post("/restore/deblur", files=[("image", part), ("image", part)]), 422, "duplicate_part")
    assert_error(await c.post("/restore/deblur", data={"seed": "1"}, files={"x": part}), 422, "unexpected_field")
    broken = {"content-type": "multipart/form-data; boundary=zzz"}
    no_disposition = b"--zzz\r\nContent-Type: image/png\r\n\r\nxx\r\n--zzz--\r\n"
    assert_error(await c.post("/restore/deblur", content=no_disposition, headers=broken), 400, "bad_multipart")
    no_boundary = {"content-type": "multipart/form-data"}
    assert_error(await c.post("/restore/deblur", content=b"--zzz--", headers=no_boundary), 400, "bad_multipart")
    many = b"".join(
        b'--zzz\r\nContent-Disposition: form-data; name="f%d"; filename="f"\r\n\r\nx\r\n' % i for i in range(2000)
    )
    assert_error(await c.post("/restore/deblur", content=many + b"--zzz--\r\n", headers=broken), 400, "bad_multipart")
    no_image = b"--zzz--\r\n"
    assert_error(await c.post("/restore/deblur", content=no_image, headers=broken), 422, "missing_image")


async def test_mask_errors(live: LiveApp) -> None:
    c, img = live.client, encode(gradient(32, 24))
    part = ("a.png", img, "image/png")
    assert_error(await c.post("/restore/inpaint", files={"image": part}), 422, "missing_mask")
    assert_error(await c.post("/restore/inpaint", content=img, headers=PNG), 422, "missing_mask")
    wrong = ("m.png", encode(Image.new("L", (16, 16))), "image/png")
    assert_error(await c.post("/restore/inpaint", files={"image": part, "mask": wrong}), 422, "bad_mask")
    junk = ("m.png", b"not an image", "image/png")
    assert_error(await c.post("/restore/inpaint", files={"image": part, "mask": junk}), 422, "bad_mask")


async def test_parameter_errors(live: LiveApp) -> None:
    c, img = live.client, encode(gradient())
    for query in ("seed=-1", "seed=abc", f"seed={2**63}", "format=gif", "quality=0", "quality=101"):
        assert_error(await c.post(f"/restore/deblur?{query}", content=img, headers=PNG), 422, "bad_parameter")


async def test_animated_image_is_refused(live: LiveApp) -> None:
    frames = [gradient(), gradient().rotate(180)]
    apng = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    assert_error(await live.client.post("/restore/deblur", content=apng, headers=PNG), 422, "multi_frame_image")


async def test_size_caps(checkpoints) -> None:
    settings = make_settings(checkpoints, max_body_bytes=4096, max_input_pixels=2000, max_output_pixels=20_000)
    async for live in start_app(settings):
        c = live.client
        big = encode(gradient(100, 100).effect_spread(3))  # noisy: compresses badly, > 4 KiB
        assert_error(await c.post("/restore/deblur", content=big, headers=PNG), 413, "body_too_large")

        async def chunked(data: bytes):  # no Content-Length: the cap is enforced while streaming
            for i in range(0, len(data), 1000):
                yield data[i : i + 1000]

        assert_error(await c.post("/restore/deblur", content=chunked(big), headers=PNG), 413, "body_too_large")
        assert_error(await c.post("/restore/deblur", content=encode(gradient(50, 50)), headers=PNG), 413,
                     "too_many_pixels")  # fmt: skip
        assert_error(await c.post("/restore/sr-x4", content=encode(gradient(40, 40)), headers=PNG), 413,
                     "output_too_large")  # fmt: skip
        ok = await c.post("/restore/sr-x4", content=encode(gradient(30, 30)), headers=PNG)
        assert ok.status_code == 200


async def test_api_key(checkpoints) -> None:
    async for live in start_app(make_settings(checkpoints, api_key="s3cret")):
        c, img = live.client, encode(gradient())
        assert_error(await c.post("/restore/deblur", content=img, headers=PNG), 401, "unauthorized")
        bad = {**PNG, "authorization": "Bearer nope"}
        assert_error(await c.post("/restore/deblur", content=img, headers=bad), 401, "unauthorized")
        assert (await c.post("/restore/deblur", content=img, headers={**PNG, "x-api-key": "s3cret"})).status_code == 200
        bearer = {**PNG, "authorization": "Bearer s3cret"}
        assert (await c.post("/restore/deblur", content=img, headers=bearer)).status_code == 200
        assert (await c.get("/healthz")).status_code == 200 and (await c.get("/metrics")).status_code == 200


def gated(checkpoints, fail: bool = False) -> tuple[dict, GatedBackend]:
    from service.runtime.devices import resolve_device

    inner = TorchBackend(checkpoints["deblur"], None, resolve_device("cpu"))
    backend = GatedBackend(inner, fail=fail)
    return {"deblur": backend}, backend


async def test_queue_full_then_recovers(checkpoints) -> None:
    backends, backend = gated(checkpoints)
    settings = make_settings({"deblur": checkpoints["deblur"]}, queue_size=2, max_batch_size=1, warmup_size=0)
    async for live in start_app(settings, backends=backends):
        c, img = live.client, encode(gradient())
        first = asyncio.ensure_future(c.post("/restore/deblur", content=img, headers=PNG))
        await asyncio.to_thread(backend.entered.wait, 10)
        queued = [asyncio.ensure_future(c.post("/restore/deblur", content=img, headers=PNG)) for _ in range(2)]
        for _ in range(500):
            if live.state.tasks["deblur"].batcher.depth == 2:
                break
            await asyncio.sleep(0.01)
        refused = await c.post("/restore/deblur", content=img, headers=PNG)
        assert_error(refused, 503, "queue_full")
        assert refused.headers["retry-after"] == "1"
        backend.release.set()
        assert [r.status_code for r in await asyncio.gather(first, *queued)] == [200, 200, 200]
        text = (await c.get("/metrics")).text
        assert 'diffir_rejected_total{reason="queue_full",task="deblur"} 1.0' in text
        assert 'diffir_requests_total{code="503",task="deblur"} 1.0' in text


async def test_deadline_exceeded(checkpoints) -> None:
    backends, backend = gated(checkpoints)
    # 1 s: long enough for the last, unobstructed request (decode in a worker process, a tiny model) on a
    # busy CPU; the first two wait behind a batch held open past it
    settings = make_settings({"deblur": checkpoints["deblur"]}, deadline_s=1.0, max_batch_size=1, warmup_size=0)
    async for live in start_app(settings, backends=backends):
        c, img = live.client, encode(gradient())
        slow = asyncio.ensure_future(c.post("/restore/deblur", content=img, headers=PNG))
        await asyncio.to_thread(backend.entered.wait, 10)
        queued = await c.post("/restore/deblur", content=img, headers=PNG)  # waits behind the stuck batch
        assert_error(queued, 504, "deadline_exceeded")
        backend.release.set()
        assert_error(await slow, 504, "deadline_exceeded")  # answered late: the client gets 504, not a stale image
        ok = await c.post("/restore/deblur", content=img, headers=PNG)
        assert ok.status_code == 200


async def test_a_client_deadline_shortens_the_servers(checkpoints) -> None:
    """`timeout` (query) or `X-Request-Timeout` (header) gives one request a shorter deadline than the
    server's 60 s: behind a stuck batch each gets 504 near its own deadline; malformed values are 422."""
    backends, backend = gated(checkpoints)
    settings = make_settings({"deblur": checkpoints["deblur"]}, deadline_s=60, max_batch_size=1, warmup_size=0)
    async for live in start_app(settings, backends=backends):
        c, img = live.client, encode(gradient())
        stuck = asyncio.ensure_future(c.post("/restore/deblur", content=img, headers=PNG))
        await asyncio.to_thread(backend.entered.wait, 10)
        loop = asyncio.get_running_loop()
        for params, headers in (({"timeout": "0.4"}, PNG), ({}, {**PNG, "X-Request-Timeout": "0.4"})):
            started = loop.time()
            r = await c.post("/restore/deblur", content=img, headers=headers, params=params)
            assert_error(r, 504, "deadline_exceeded")
            assert 0.4 <= loop.time() - started < 10, loop.time() - started  # its own deadline, not the server's 60 s
        malformed = (
            ({"timeout": "0"}, PNG),
            ({"timeout": "4.9e-324"}, PNG),  # a denormal from the fuzzer: no restoration can meet it
            ({}, {**PNG, "X-Request-Timeout": "soon"}),
            ({}, {**PNG, "X-Request-Timeout": "0.001"}),
        )
        for params, headers in malformed:
            r = await c.post("/restore/deblur", content=img, headers=headers, params=params)
            assert r.status_code == 422, (params, headers, r.text)
        backend.release.set()
        assert (await stuck).status_code == 200  # no client deadline: the server's applies


async def test_backend_failure_is_a_500_for_that_batch_only(checkpoints) -> None:
    backends, backend = gated(checkpoints, fail=True)
    backend.release.set()
    settings = make_settings({"deblur": checkpoints["deblur"]}, warmup_size=0)
    async for live in start_app(settings, backends=backends):
        r = await live.client.post("/restore/deblur", content=encode(gradient()), headers=PNG)
        assert_error(r, 500, "internal_error")
        backend.fail = False
        assert (await live.client.post("/restore/deblur", content=encode(gradient()), headers=PNG)).status_code == 200


async def test_draining_refuses_new_work(live: LiveApp) -> None:
    live.state.set_draining()
    r = await live.client.post("/restore/deblur", content=encode(gradient()), headers=PNG)
    assert_error(r, 503, "draining")
    assert r.headers["retry-after"] == "1"
    ready = await live.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"


async def test_hostile_bytes_get_precise_codes(live: LiveApp) -> None:
    img = encode(gradient())
    bad_crc = bytearray(img)
    bad_crc[29:33] = b"\0\0\0\0"  # IHDR's CRC
    jpeg = encode(gradient(64, 64), "JPEG")
    cases = {
        b"<!DOCTYPE html><html></html>": (415, "unsupported_format"),
        b"PK\x03\x04" + b"\0" * 40: (415, "unsupported_format"),
        b"8BPS\x00\x01" + b"\0" * 40: (415, "unsupported_format"),  # PSD
        b"\0\0\1\0\1\0" + b"\0" * 40: (415, "unsupported_format"),  # ICO
        b"<svg xmlns='http://www.w3.org/2000/svg'/>": (415, "unsupported_format"),
        b"%!PS-Adobe-3.0 EPSF-3.0\n": (415, "unsupported_format"),
        b"SIMPLE  =                    T" + b" " * 50: (415, "unsupported_format"),  # FITS
        bytes(bad_crc): (422, "undecodable_image"),
        jpeg[: len(jpeg) // 2]: (422, "undecodable_image"),
        b"\x89PNG\r\n\x1a\n": (422, "undecodable_image"),
        b"BM" + b"\xff" * 60: (422, "undecodable_image"),
    }
    for body, (status, code) in cases.items():
        assert_error(await live.client.post("/restore/deblur", content=body, headers=PNG), status, code)


async def test_output_format_size_limits_are_checked_before_the_model(live: LiveApp) -> None:
    wide = encode(gradient(4100, 1))
    r = await live.client.post("/restore/sr-x4?format=webp", content=wide, headers=PNG)
    assert_error(r, 422, "bad_parameter")
    assert "16383" in r.json()["message"]


async def test_web_page_is_the_fallback(live: LiveApp) -> None:
    from service.http.app import WEB_DIR

    r = await live.client.get("/")
    if WEB_DIR.is_dir():
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert_error(await live.client.get("/restore/deblur"), 405, "method_not_allowed")


async def test_readyz_is_503_until_warmed(checkpoints) -> None:
    backends, backend = gated(checkpoints)
    settings = make_settings({"deblur": checkpoints["deblur"]}, warmup_size=16)
    from contextlib import AsyncExitStack

    import httpx

    from service.http.app import create_app

    app = create_app(settings, backends=backends)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        client = await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://t"))
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "warming"
        assert "diffir_ready 0.0" in (await client.get("/metrics")).text
        assert (await client.get("/healthz")).status_code == 200
        backend.release.set()
        for _ in range(500):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        assert (await client.get("/readyz")).status_code == 200
        assert "diffir_ready 1.0" in (await client.get("/metrics")).text


async def test_coarse_buckets_batch_different_sizes(checkpoints) -> None:
    backend = SpyGate(TorchBackend(checkpoints["deblur"], None, CPU))
    settings = make_settings({"deblur": checkpoints["deblur"]}, bucket_multiple=64, max_wait_ms=0, warmup_size=0)
    async for live in start_app(settings, backends={"deblur": backend}):
        c = live.client
        sizes = [(40, 24), (48, 30), (64, 64)]
        together = await one_batch(live, backend, [("/restore/deblur", encode(gradient(*s))) for s in sizes])
        assert backend.batch_sizes == [1, 3]  # three sizes, one 64x64 bucket, one model call
        assert {r.headers["x-batch-size"] for r in together} == {"3"}
        alone = [await c.post("/restore/deblur", content=encode(gradient(*s)), headers=PNG) for s in sizes]
        assert backend.batch_sizes[2:] == [1, 1, 1]
        for size, a, t in zip(sizes, alone, together):
            assert decode(t.content).size == size
            assert a.content == t.content  # padded to its own bucket either way: batch-independent


async def test_shipped_defaults_serve_deblur_when_present() -> None:
    """With no settings at all the service serves the shipped models (once they are in models/weights)."""
    from models.tasks import TASKS
    from service.settings import Settings

    paths = [TASKS[name].default_checkpoint_path() for name in TASKS]
    if not all(p is not None and p.is_file() for p in paths):
        pytest.skip("shipped weights not in models/weights yet (the clear start-up error is tested instead)")
    async for live in start_app(Settings(warmup_size=16)):
        r = await live.client.post("/restore/deblur", content=encode(gradient(48, 40)), headers=PNG)
        assert r.status_code == 200 and decode(r.content).size == (48, 40)
        tasks = {t["name"] for t in (await live.client.get("/tasks")).json()["tasks"]}
        assert tasks == set(TASKS)


async def test_async_client(live: LiveApp) -> None:
    import httpx

    from service.client import AsyncClient, ClientError

    transport = httpx.ASGITransport(app=live.app)
    async with AsyncClient("http://test", transport=transport) as client:
        assert await client.ready()
        assert {t["name"] for t in await client.tasks()} == {"deblur", "sr-x4", "inpaint"}
        mask = encode(Image.new("L", (32, 24), 255))
        out = await client.restore("inpaint", encode(gradient(32, 24)), mask=mask, seed=2, format="webp", quality=90)
        assert out.content_type == "image/webp" and decode(out.data).size == (32, 24)
        with pytest.raises(ClientError) as err:
            await client.restore("nope", encode(gradient()))
        assert (err.value.status, err.value.code) == (404, "unknown_task") and err.value.request_id


async def test_degenerate_sizes_are_restored(live: LiveApp) -> None:
    # the longest 1-px strips accepted in any shape (padded cost <= SHAPE_FREE_COST; longer: tests/service/test_cost.py)
    for task, scale, n in (("deblur", 1, 8000), ("sr-x4", 4, 512)):
        for w, h in ((1, 1), (1, n), (n, 1), (3, 2)):
            r = await live.client.post(f"/restore/{task}", content=encode(gradient(w, h)), headers=PNG)
            assert r.status_code == 200 and decode(r.content).size == (w * scale, h * scale), (task, w, h)
