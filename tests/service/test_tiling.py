"""Tiled restoration: geometry, exact windowed prior, and agreement with untiled restoration.

Stated tolerance (float outputs in [0, 1], tiny random models, 96x120 input, 48-pixel tiles with
8 pixels of overlap; SR: 40x48 input, 24-pixel tiles, 4 of overlap): max |tiled - untiled| <= 0.01
and mean <= 3e-4; through the HTTP API with 8-bit PNG output, max difference <= 3 levels and mean
<= 0.1 level. The difference comes only from DIRformer's channel attention pooling its statistics
per tile; the IPR is identical.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import service.runtime.torch_backend as torch_backend
from models.sizing import pad_to_multiple
from service.runtime.devices import resolve_device
from service.runtime.torch_backend import TorchBackend
from service.scheduling.engine import Engine, EngineLimits, Job
from service.scheduling.tiling import ramp, restore_tiled, tile_starts
from tests.service.conftest import decode, encode, make_settings, start_app

MAX_ABS, MEAN_ABS = 1e-2, 3e-4


def test_tile_starts_cover_with_overlap() -> None:
    for size in (1, 7, 64, 65, 100, 200, 1000):
        for tile, overlap in ((64, 16), (32, 8), (128, 0)):
            starts = tile_starts(size, tile, overlap)
            assert starts[0] == 0 and starts == sorted(set(starts))
            assert min(size, starts[-1] + tile) == size
            for a, b in itertools.pairwise(starts):
                assert a + tile - b >= overlap  # neighbours overlap at least by `overlap`
                assert b > a


def test_ramp_is_positive_and_symmetric() -> None:
    w = ramp(64, 16, True, True)
    assert float(w.min()) > 0 and float(w.max()) == 1.0
    assert torch.allclose(w, w.flip(0))
    assert torch.equal(ramp(64, 16, False, False), torch.ones(64))


def scene(h: int, w: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    g = torch.Generator().manual_seed(1)
    return (torch.stack([x, y, (x + y) / 2])[None] + 0.05 * torch.randn(1, 3, h, w, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("task", ["deblur", "sr-x4", "inpaint"])
def test_tiled_matches_untiled(checkpoints, task: str) -> None:
    backend = TorchBackend(checkpoints[task], None, resolve_device("cpu"))
    h, w = (40, 48) if task == "sr-x4" else (96, 120)
    tile, overlap = (24, 4) if task == "sr-x4" else (48, 8)
    mask = None
    if task == "inpaint":
        mask = torch.zeros(1, 1, h, w)
        mask[..., 30:60, 40:80] = 1
    job = Job(scene(h, w), mask, seed=3)
    untiled = Engine(task, backend, EngineLimits(tile, overlap, 10**9, 0)).run_batch([job])[0]
    tiled_engine = Engine(task, backend, EngineLimits(tile, overlap, 1000, 0))
    assert tiled_engine.tiled(job)
    tiled = tiled_engine.run_batch([job])[0]
    assert tiled.shape == untiled.shape == (1, 3, h * backend.info.scale, w * backend.info.scale)
    diff = (tiled - untiled).abs()
    assert float(diff.max()) <= MAX_ABS and float(diff.mean()) <= MEAN_ABS


def test_windowed_prior_is_exact(checkpoints, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = TorchBackend(checkpoints["deblur"], None, resolve_device("cpu"))
    lq, _ = pad_to_multiple(scene(96, 120), 8, "reflect")
    noise = torch.randn(1, 256, generator=torch.Generator().manual_seed(0))
    whole = backend.prior(lq, noise)
    monkeypatch.setattr(torch_backend, "PRIOR_WINDOW", 8)  # 24x30 at CPEN resolution -> 3x4 windows
    windowed = backend.prior(lq, noise)
    assert torch.allclose(whole, windowed, atol=1e-5, rtol=1e-4)


def test_restore_tiled_with_identity_is_exact() -> None:
    x = scene(50, 70)
    out = restore_tiled(x, torch.zeros(1, 256), lambda t, ipr: t, tile_size=16, overlap=4, multiple=8,
                        pad_mode="reflect", scale=1)  # fmt: skip
    assert torch.allclose(out, x, atol=1e-6)


@pytest.mark.anyio
async def test_tiled_request_through_the_api(checkpoints) -> None:
    from PIL import Image

    arr = (scene(96, 120)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    data = encode(Image.fromarray(arr))
    outputs = []
    for threshold in (10**9, 1000):
        settings = make_settings(
            {"deblur": checkpoints["deblur"]}, tile_size=48, tile_overlap=8, tile_threshold_pixels=threshold
        )
        async for live in start_app(settings):
            r = await live.client.post("/restore/deblur", content=data, headers={"content-type": "image/png"})
            assert r.status_code == 200
            outputs.append(np.asarray(decode(r.content)).astype(int))
    diff = np.abs(outputs[0] - outputs[1])
    assert diff.max() <= 3 and diff.mean() <= 0.1


@pytest.mark.anyio
async def test_abandoned_tiled_request_stops_early() -> None:
    """A 504'd tiled request frees the inference thread at its next tile instead of running on: after
    waiting past the time the whole restoration would take, the tile count has stopped growing."""
    import asyncio
    import threading
    import time

    from service.settings import Settings
    from tests.service.conftest import IdentityBackend

    tile_s, tiles = 0.15, 9  # 120x96 in 48-pixel tiles with 8 of overlap: 3 x 3 tiles, 1.35 s of work

    class SlowTiles(IdentityBackend):
        def __init__(self) -> None:
            super().__init__()
            self.last_tile = threading.Event()

        def restore(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            time.sleep(tile_s)
            if self.calls >= tiles:
                self.last_tile.set()
            return super().restore(lq, ipr)

    backend = SlowTiles()
    settings = Settings(
        tasks={"deblur": {}},
        warmup_size=0,
        tiled_deadline_s=0.4,
        tile_size=48,
        tile_overlap=8,
        tile_threshold_pixels=1000,
    )
    async for live in start_app(settings, backends={"deblur": backend}):
        from PIL import Image

        data = encode(Image.new("RGB", (120, 96), (10, 20, 30)))
        r = await live.client.post("/restore/deblur", content=data, headers={"content-type": "image/png"})
        assert r.status_code == 504
        at_504 = backend.calls
        assert 1 <= at_504 < tiles
        # past the full run time (plus margin for a busy CPU): a restoration that ran on would have
        # finished every tile by now
        finished = await asyncio.to_thread(backend.last_tile.wait, 2 * tiles * tile_s)
        assert not finished and backend.calls <= at_504 + 1, (at_504, backend.calls)  # only the tile in flight


@pytest.mark.anyio
async def test_small_requests_run_between_the_tiles_of_a_large_one() -> None:
    """A small request sent once the large image's tiles have started is computed before its last tile: the
    backend's own call log shows tiles both before and after the small request's model call."""
    import asyncio
    import time

    from PIL import Image

    from service.settings import Settings
    from tests.service.conftest import IdentityBackend

    class SlowTiles(IdentityBackend):
        """Logs every model call in order: `tile` (0.1 s each) or `small` (a whole small request)."""

        def __init__(self) -> None:
            super().__init__()
            self.log: list[str] = []

        def run(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
            self.log.append("small")
            return IdentityBackend.restore(self, lq, noise)

        def restore(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
            self.log.append("tile")
            time.sleep(0.1)
            return super().restore(lq, ipr)

    backend = SlowTiles()
    settings = Settings(
        tasks={"deblur": {}}, warmup_size=0, tile_size=48, tile_overlap=8, tile_threshold_pixels=1000, max_wait_ms=0
    )
    async for live in start_app(settings, backends={"deblur": backend}):
        finished: dict[str, float] = {}

        async def post(name: str, data: bytes, client=live.client, done=finished) -> int:
            r = await client.post("/restore/deblur", content=data, headers={"content-type": "image/png"})
            done[name] = time.perf_counter()
            return r.status_code

        big = asyncio.ensure_future(post("big", encode(Image.new("RGB", (120, 96), (9, 9, 9)))))  # 9 tiles
        for _ in range(500):  # until the first tile is in the model (not a guess at how long that takes)
            if "tile" in backend.log:
                break
            await asyncio.sleep(0.01)
        assert "tile" in backend.log, "the large image never reached the model"
        assert await post("small", encode(Image.new("RGB", (24, 24), (1, 2, 3)))) == 200  # 576 px (padded): not tiled
        assert await big == 200
        assert backend.log.count("tile") == 9 and backend.log.count("small") == 1, " ".join(backend.log)
        assert "tile" in backend.log[backend.log.index("small") :], backend.log  # tiles were left when it ran
        assert finished["small"] < finished["big"]
        assert live.state.tasks["deblur"].depth == 0


def test_prior_of_a_tiled_input_runs_in_tile_sized_units(checkpoints) -> None:
    """The torch backend splits a large input's prior into CPEN windows of one tile's input area, one
    unit of work each (so the device can be yielded between them), and still returns the exact IPR."""
    backend = TorchBackend(checkpoints["deblur"], None, resolve_device("cpu"))
    lq, _ = pad_to_multiple(scene(96, 120), 8, "reflect")
    noise = torch.randn(1, 256, generator=torch.Generator().manual_seed(0))
    whole = backend.prior(lq, noise)
    run = backend.prior_run(lq, noise, tile_edge=32)  # 32 px = 8 at CPEN's 1/4: 24x30 -> 3x4 windows
    steps = 1
    while run.step():
        steps += 1
    assert run.units == steps == 12
    assert torch.allclose(run.ipr, whole, atol=1e-5, rtol=1e-4)
    assert backend.prior_run(lq, noise, tile_edge=480).units == 1  # fits one window: one unit


@pytest.mark.anyio
async def test_small_requests_run_between_the_prior_units_of_a_large_one() -> None:
    """A small request sent while a tiled job's prior is being computed is answered before that
    prior is finished: the prior is not one unsplittable block of device time."""
    import asyncio
    import threading
    import time

    from PIL import Image

    from service.scheduling.tiling import KnownPrior
    from service.settings import Settings
    from tests.service.conftest import IdentityBackend

    class SlowPrior(KnownPrior):
        units = 6

        def __init__(self, owner: SlowPriorBackend) -> None:
            super().__init__(torch.zeros(1, 256))
            self.owner = owner

        def step(self) -> bool:
            self.owner.started.set()
            time.sleep(0.15)
            self.owner.prior_steps += 1
            return self.owner.prior_steps < self.units

    class SlowPriorBackend(IdentityBackend):
        def __init__(self) -> None:
            super().__init__()
            self.started, self.prior_steps = threading.Event(), 0

        def prior_run(self, lq: torch.Tensor, noise: torch.Tensor, tile_edge: int) -> SlowPrior:
            return SlowPrior(self)

    backend = SlowPriorBackend()
    settings = Settings(
        tasks={"deblur": {}}, warmup_size=0, tile_size=48, tile_overlap=8, tile_threshold_pixels=1000, max_wait_ms=0
    )
    async for live in start_app(settings, backends={"deblur": backend}):
        png = {"content-type": "image/png"}
        big = asyncio.ensure_future(
            live.client.post("/restore/deblur", content=encode(Image.new("RGB", (120, 96), (9, 9, 9))), headers=png)
        )
        assert await asyncio.to_thread(backend.started.wait, 30)
        r = await live.client.post(
            "/restore/deblur", content=encode(Image.new("RGB", (24, 24), (1, 2, 3))), headers=png
        )  # 24 x 24 pads to itself, under the threshold (30 x 30 pads to 1024: tiled)
        assert r.status_code == 200
        assert backend.prior_steps < SlowPrior.units, backend.prior_steps  # answered inside the prior
        assert (await big).status_code == 200
        assert backend.prior_steps == SlowPrior.units
