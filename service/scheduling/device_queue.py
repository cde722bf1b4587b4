"""The inference thread's work queue, by cost class: batches of small requests before tiles.

Every unit of model work (a small batch, a large image's prior, one tile, its blend) runs on the one
inference thread, one at a time. Units wait in two FIFO queues: a small batch that is waiting runs
before the next tile of a large image, so a small request waits at most for the tile in flight; and
a tile waits at most one tile's time behind small work, so a steady stream of small requests cannot
starve a large image (it gets at least half of the device). Before starting a tile while small
requests are still on their way (being decoded or gathered into a batch: `small_pending`), the queue
holds that tile for up to `hold_s` (the batching window plus a short decode allowance), so they are
not overtaken by a tile queued a moment earlier. A unit whose caller gave up is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

SMALL = 0
"""Batches of ordinary requests."""
LARGE = 1
"""Prior, tiles and blend of tiled (large) images."""


@dataclass
class _Unit:
    fn: Callable[..., Any]
    args: tuple
    future: asyncio.Future
    queued: float


class DeviceQueue:
    def __init__(self, executor: Executor, small_pending: Callable[[], bool] = lambda: False, hold_s: float = 0.0):
        self.executor = executor
        self.small_pending = small_pending
        self.hold_s = hold_s
        self._queues: dict[int, deque[_Unit]] = {SMALL: deque(), LARGE: deque()}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_large_s = 0.0
        """How long the last large unit took: a large unit never waits longer than that behind small work."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="device-queue")

    async def run(self, fn: Callable[..., Any], *args: Any, priority: int = SMALL) -> Any:
        """Run `fn(*args)` on the inference thread when its turn comes; returns its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._queues[priority].append(_Unit(fn, args, future, loop.time()))
        self._wake.set()
        return await future

    def _next(self, now: float) -> int | None:
        """SMALL or LARGE: small work first, unless the oldest large unit has waited a large unit's time."""
        for queue in self._queues.values():
            while queue and queue[0].future.done():  # its caller gave up while it waited
                queue.popleft()
        small, large = self._queues[SMALL], self._queues[LARGE]
        if small and large:
            patience = max(self.last_large_s, self.hold_s)
            return LARGE if now - large[0].queued >= patience else SMALL
        return SMALL if small else LARGE if large else None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        hold_until: float | None = None
        while True:
            kind = self._next(loop.time())
            if kind is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            if kind == LARGE and self.hold_s > 0 and self.small_pending():
                hold_until = hold_until or loop.time() + self.hold_s  # at most hold_s per large unit
                if loop.time() < hold_until:
                    self._wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), hold_until - loop.time())
                    continue
            unit = self._queues[kind].popleft()
            if kind == LARGE:
                hold_until = None
            started = loop.time()
            try:
                result = await loop.run_in_executor(self.executor, unit.fn, *unit.args)
            except asyncio.CancelledError:
                if not unit.future.done():
                    unit.future.cancel()
                raise
            except Exception as exc:  # handed to the caller
                if not unit.future.done():
                    unit.future.set_exception(exc)
            else:
                if not unit.future.done():
                    unit.future.set_result(result)
            if kind == LARGE:
                self.last_large_s = loop.time() - started

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for queue in self._queues.values():
            for unit in queue:
                if not unit.future.done():
                    unit.future.cancel()
            queue.clear()
