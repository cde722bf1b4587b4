"""The inference thread's work queue, ordered by cost class: batches of small requests before tiles.

Every unit of model work (a small batch, a large image's prior, one tile, its blend) runs on the one
inference thread, one at a time. Units wait here in (priority, arrival) order, so a small batch
that is waiting runs before the next tile of a large image: a small request waits at most for the
tile in flight. Before starting a tile while small requests are still on their way (being decoded
or gathered into a batch: `small_pending`), the queue holds that tile for up to `hold_s` (the
batching window plus a short decode allowance), so they are not overtaken by a tile queued a moment
earlier. A unit whose caller gave up is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

SMALL = 0
"""Batches of ordinary requests."""
LARGE = 1
"""Prior, tiles and blend of tiled (large) images."""


class DeviceQueue:
    def __init__(self, executor: Executor, small_pending: Callable[[], bool] = lambda: False, hold_s: float = 0.0):
        self.executor = executor
        self.small_pending = small_pending
        self.hold_s = hold_s
        self._heap: list[tuple[int, int, Callable[..., Any], tuple, asyncio.Future]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="device-queue")

    async def run(self, fn: Callable[..., Any], *args: Any, priority: int = SMALL) -> Any:
        """Run `fn(*args)` on the inference thread when its turn comes; returns its result."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (priority, next(self._seq), fn, args, future))
        self._wake.set()
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        hold_until: float | None = None
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            priority, _, fn, args, future = self._heap[0]
            if future.done():  # its caller gave up while it waited
                heapq.heappop(self._heap)
                continue
            if priority > SMALL and self.hold_s > 0 and self.small_pending():
                hold_until = hold_until or loop.time() + self.hold_s  # at most hold_s per large unit
                if loop.time() < hold_until:
                    self._wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), hold_until - loop.time())
                    continue
            heapq.heappop(self._heap)
            hold_until = None
            try:
                result = await loop.run_in_executor(self.executor, fn, *args)
            except asyncio.CancelledError:
                if not future.done():
                    future.cancel()
                raise
            except Exception as exc:  # handed to the caller
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for *_, future in self._heap:
            if not future.done():
                future.cancel()
        self._heap.clear()
