"""What the README promises about determinism, through the real batcher with the shipped models.

The same input and seed, alone and as one member of batches of 2, 3 and 4 with other images and
seeds. Old: the IPR path (CPEN's MLP, the denoiser, the IPR -> scale/shift kernels) ran as one matrix
product over the batch, whose BLAS kernel and rounding change with the row count, and small
convolutions ran on another kernel for a batch than for one sample: here deblur at 128² had a pixel
one level off in 4 of the 6 batches (sr-x4 at 64² with other images: 6-10 pixels at every batch
size). Now those run per sample; what is left (float rounding in the smallest feature maps of small
images) is bounded here as the README states.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.tasks import TASKS
from service.runtime.torch_backend import TorchBackend
from service.settings import Settings
from tests.service.conftest import LiveApp, SpyGate, start_app

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]
CPU = torch.device("cpu")
MAX_LEVELS_OFF = 1
"""README: a batched result differs from its lone one by at most one 8-bit level, in at most 2 pixels."""


def png(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    smooth = np.linspace(0, 255, size * size * 3).reshape(size, size, 3)
    pixels = np.clip(smooth + rng.normal(0, 40, smooth.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


async def depth(live: LiveApp, task: str) -> float:
    text = (await live.client.get("/metrics")).text
    return next(float(x.split()[-1]) for x in text.splitlines() if x.startswith(f'diffir_queue_depth{{task="{task}"}}'))


async def together(live: LiveApp, gate: SpyGate, task: str, bodies: list[tuple[int, bytes]]) -> list:
    """One model call for all `bodies` ((seed, png)): a blocker holds the gate while they queue."""
    gate.release.clear()
    gate.entered.clear()
    c = live.client
    headers = {"content-type": "image/png"}
    blocker = asyncio.ensure_future(c.post(f"/restore/{task}", content=png(8, 99), headers=headers))
    assert await asyncio.to_thread(gate.entered.wait, 30)
    queued = [asyncio.ensure_future(c.post(f"/restore/{task}?seed={s}", content=b, headers=headers)) for s, b in bodies]
    for _ in range(3000):
        if await depth(live, task) == len(bodies):
            break
        await asyncio.sleep(0.01)
    gate.release.set()
    assert (await blocker).status_code == 200
    return await asyncio.gather(*queued)


def levels_off(a: bytes, b: bytes) -> tuple[int, int]:
    x = np.asarray(Image.open(io.BytesIO(a)), dtype=np.int16)
    y = np.asarray(Image.open(io.BytesIO(b)), dtype=np.int16)
    diff = np.abs(x - y).max(axis=-1)
    return int(np.count_nonzero(diff)), int(diff.max())


@pytest.mark.parametrize(
    ("task", "size", "pixels_off"),
    [
        ("sr-x4", 40, 2),  # the bound: 1 pixel one level off in 1 of 6 batches (old: 2 of 6)
        ("sr-x4", 64, 0),
        ("deblur", 128, 0),  # old: 1 pixel one level off in 4 of the 6 batches
    ],
)
async def test_a_result_alone_and_inside_batches_of_2_to_4(task: str, size: int, pixels_off: int) -> None:
    checkpoint = TASKS[task].default_checkpoint_path()
    if checkpoint is None or not checkpoint.is_file():
        pytest.skip(f"the shipped {task} checkpoint is not in models/weights/")
    gate = SpyGate(TorchBackend(checkpoint, None, CPU))
    settings = Settings(warmup_size=0, max_batch_size=4, max_wait_ms=0, tasks={task: {}})
    target = png(size, 1)
    found = []
    async for live in start_app(settings, backends={task: gate}):
        alone = await together(live, gate, task, [(7, target)])
        for k in (2, 3, 4):
            companions = [(s, png(size, s + 10)) for s in range(k - 1)]
            for position in (0, k - 1):  # first and last in the batch
                members = [*companions[:position], (7, target), *companions[position:]]
                rs = await together(live, gate, task, members)
                assert {r.headers["x-batch-size"] for r in rs} == {str(k)}
                found.append((k, position, *levels_off(alone[0].content, rs[position].content)))
    assert gate.batch_sizes.count(1) >= 1 and {2, 3, 4} <= set(gate.batch_sizes)
    assert max(p for *_, p, _ in found) <= pixels_off, found
    assert max(lv for *_, lv in found) <= MAX_LEVELS_OFF, found
