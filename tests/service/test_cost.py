"""Cost by the work really done: padded area and scale decide tiling, batch caps and shape refusals.

Each failed on the old path, which counted height x width: a 1 x N strip (padded to 8 x N, eight times
the work) was never tiled and was admitted at any length; tiles of a thin strip were 384-pixel slivers.
"""

from __future__ import annotations

import pytest
import torch

from models.sizing import tile_shape
from service.scheduling.cost import MAX_SHAPE_FACTOR, SHAPE_FREE_COST, Work, shape_refusal
from service.scheduling.engine import Engine, EngineLimits, Job
from service.scheduling.tiling import KnownPrior, TiledRestoration, geometry, tile_starts
from service.settings import Settings
from tests.service.conftest import IdentityBackend, encode, identity_backends, start_app

PNG = {"content-type": "image/png"}


def test_the_cost_is_the_padded_area_times_the_scale_squared() -> None:
    assert Work(1, 4096, 8).cost == 8 * 4096  # a strip pays for its padding
    assert Work(64, 64, 8).cost == 64 * 64
    assert Work(3, 5, 8, scale=4).cost == 8 * 8 * 16  # sr-x4: output pixels
    assert Work(64, 64, 8).shape_factor == 1.0
    assert Work(1, 4096, 8).shape_factor == pytest.approx(8.0)  # vs the 64 x 64 square


def test_only_shapes_costing_over_the_limit_and_the_floor_are_refused() -> None:
    assert shape_refusal(Work(1, 262144, 8)) is not None
    assert shape_refusal(Work(262144, 1, 8)) is not None
    assert shape_refusal(Work(3, 100000, 8)) is not None  # 8/3 = 2.7x
    assert shape_refusal(Work(4, 65536, 8)) is not None  # 2x: memory follows the padded area
    assert shape_refusal(Work(5, 65536, 8)) is None  # 1.6x
    assert shape_refusal(Work(9, 30000, 8)) is None  # pads to 16 rows: 1.78x
    assert shape_refusal(Work(1, 300, 8)) is None  # 8 x 304 padded pixels: cheap, any shape
    assert shape_refusal(Work(1, SHAPE_FREE_COST // 8, 8)) is None  # at the floor
    assert shape_refusal(Work(1, SHAPE_FREE_COST // 8 + 8, 8)) is not None
    assert shape_refusal(Work(1, 4096, 8, scale=4)) is not None  # sr-x4: 8 x 4096 x 16 output pixels
    message = shape_refusal(Work(2, 131072, 8))
    assert message is not None
    assert "2x131072" in message and "8x131072" in message and f"{MAX_SHAPE_FACTOR:g}x" in message
    assert "at least 5 pixels" in message


def engine(threshold: int, kind: str = "deblur", scale: int = 1) -> Engine:
    return Engine(kind, IdentityBackend(kind, scale), EngineLimits(48, 8, threshold, 0))


def test_the_tiling_decision_counts_the_padded_area_and_the_scale() -> None:
    e = engine(10_000)
    assert e.tiles(1, 4096)  # 4096 pixels, but 8 x 4096 = 32768 padded: tiled
    assert e.tiles(4096, 1)
    assert not e.tiles(100, 90)  # 104 x 96 = 9984 padded
    assert e.tiles(100, 97)
    sr = engine(64 * 64 * 4, "sr", 4)
    assert sr.tiles(64, 64)  # 64 x 64 in, 256 x 256 out: over 16384
    assert not sr.tiles(32, 32)
    job = Job(torch.zeros(1, 3, 1, 100), None, 0)
    assert e.cost(job) == 8 * 104  # what the batchers' pixel caps count


def test_a_strip_is_tiled_along_its_long_side_in_pieces_of_a_tiles_area() -> None:
    assert tile_shape(8, 5000, 48, 8) == (48, 288)  # 48² / 8 rows = 288 columns per piece
    assert tile_shape(5000, 8, 48, 8) == (288, 48)
    assert tile_shape(500, 500, 48, 8) == (48, 48)
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(1, 3, 8, 5000, generator=g)
    seen: list[tuple[int, int]] = []

    def restore(x: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        seen.append((x.shape[-2], x.shape[-1]))
        return x.clone()

    run = TiledRestoration(lq, KnownPrior(torch.zeros(1, 256)), restore, geometry(48, 8, 8, "reflect", 1))
    assert run.tiles == len(tile_starts(5000, 288, 8)) == 18  # was 5000 / 40 = 125 slivers of 8 x 48
    while run.step():
        pass
    assert max(h * w for h, w in seen) <= 48 * 48
    torch.testing.assert_close(run.result(), lq)  # the identity restores the strip exactly, seams included


@pytest.mark.anyio
async def test_thin_strips_are_refused_up_front_naming_the_limit() -> None:
    from PIL import Image

    settings = Settings(warmup_size=0, max_wait_ms=1, tasks={"deblur": {}, "sr-x4": {}, "inpaint": {}})
    async for live in start_app(settings, backends=identity_backends()):
        c = live.client
        for size in ((40000, 2), (2, 40000)):
            r = await c.post("/restore/deblur", content=encode(Image.new("RGB", size, (90, 120, 150))), headers=PNG)
            assert r.status_code == 422, r.text[:200]
            body = r.json()
            assert body["code"] == "shape_too_costly"
            assert "8x40000" in body["message"] or "40000x8" in body["message"]
        r = await c.post("/restore/sr-x4", content=encode(Image.new("RGB", (4096, 1))), headers=PNG)
        assert (r.status_code, r.json()["code"]) == (422, "shape_too_costly")
        ok = await c.post("/restore/deblur", content=encode(Image.new("RGB", (16000, 5), (1, 2, 3))), headers=PNG)
        assert ok.status_code == 200, ok.text[:200]  # 1.5x its square: allowed
        tiny = await c.post("/restore/deblur", content=encode(Image.new("RGB", (300, 1))), headers=PNG)
        assert tiny.status_code == 200  # cheap in any shape
