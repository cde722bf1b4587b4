"""An asyncio micro-batcher: bounded queue, one future per request, shape buckets, deadlines.

One instance per task. `submit` puts a request in the queue (or refuses at once when the queue
is full, by count or by total cost such as pixels, or the server drains) and awaits its own
future. A single loop forms batches: it serves the bucket that holds the oldest waiting request,
and closes the batch when `max_batch_size` requests of that bucket wait, their total cost (pixels)
reaches `max_batch_cost`, or `max_wait` has passed since the oldest arrived. Before a batch
reaches the model, requests whose deadline passed or whose client went away are dropped. An
exception in a batch fails exactly that batch's futures; the number of outputs is checked; an
exception returned in place of one output fails that request alone (one bad image, e.g. a
non-finite model output, never fails its companions).
Batches run one after another, so while the model is busy the next batch fills up by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

I = TypeVar("I")
O = TypeVar("O")


class QueueFull(Exception):
    """The queue is at capacity (503 with Retry-After)."""


class Draining(Exception):
    """The batcher no longer accepts work (shutdown in progress)."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before it was answered (504)."""


class Disconnected(Exception):
    """The client went away while the request was queued; it was not computed."""


@dataclass
class BatcherHooks:
    """Callbacks for metrics; each defaults to doing nothing."""

    depth: Callable[[int], None] = lambda n: None
    rejected: Callable[[str], None] = lambda reason: None
    dropped: Callable[[str], None] = lambda reason: None
    batch: Callable[[int, float, list[float]], None] = lambda size, seconds, waits: None


@dataclass
class _Entry(Generic[I, O]):
    item: I
    key: Hashable
    enqueued: float
    deadline: float
    alive: Callable[[], Awaitable[bool]] | None
    cost: int = 0
    future: asyncio.Future[tuple[O, float]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher(Generic[I, O]):
    def __init__(
        self,
        run_batch: Callable[[list[I]], Awaitable[list[O]]],
        *,
        key: Callable[[I], Hashable],
        max_batch_size: int,
        max_wait_s: float,
        queue_size: int,
        cost: Callable[[I], int] | None = None,
        max_queued_cost: int | None = None,
        max_batch_cost: int | None = None,
        hooks: BatcherHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run_batch = run_batch
        self._key = key
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self._cost = cost or (lambda item: 0)
        self.max_queued_cost = max_queued_cost
        self.max_batch_cost = max_batch_cost
        self._queued_cost = 0
        self.hooks = hooks or BatcherHooks()
        self._clock = clock
        self._buckets: dict[Hashable, deque[_Entry[I, O]]] = {}
        self._count = 0
        self._changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.running = 0  # requests inside the batch being computed

    # --- public API -------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._count

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def submit(
        self, item: I, *, deadline_s: float, alive: Callable[[], Awaitable[bool]] | None = None
    ) -> tuple[O, float]:
        """Queue `item`; returns (result, seconds it waited in the queue)."""
        if self._closing:
            self.hooks.rejected("draining")
            raise Draining("the server is shutting down")
        if self._count >= self.queue_size:
            self.hooks.rejected("queue_full")
            raise QueueFull(f"queue full ({self.queue_size} waiting)")
        cost = self._cost(item)
        if self.max_queued_cost is not None and self._count and self._queued_cost + cost > self.max_queued_cost:
            self.hooks.rejected("queue_full")
            raise QueueFull(f"queue full ({self._queued_cost} of {self.max_queued_cost} pixels waiting)")
        now = self._clock()
        entry: _Entry[I, O] = _Entry(item, self._key(item), now, now + deadline_s, alive, cost)
        self._buckets.setdefault(entry.key, deque()).append(entry)
        self._count += 1
        self._queued_cost += cost
        self._idle.clear()
        self.hooks.depth(self._count)
        self._changed.set()
        try:
            return await asyncio.wait_for(asyncio.shield(entry.future), timeout=max(deadline_s, 0.0))
        except asyncio.TimeoutError:
            entry.future.cancel()  # skipped if still queued; discarded if already computing
            self.hooks.rejected("deadline")
            raise DeadlineExceeded(f"not answered within {deadline_s:g} s") from None
        except asyncio.CancelledError:
            entry.future.cancel()
            raise

    async def close(self, timeout_s: float) -> bool:
        """Refuse new work, let queued and running requests finish; True if all finished in time."""
        self._closing = True
        self._changed.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
            finished = True
        except asyncio.TimeoutError:
            finished = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for bucket in self._buckets.values():
            for entry in bucket:
                if not entry.future.done():
                    self.hooks.rejected("draining")
                    entry.future.set_exception(Draining("shut down before this request ran"))
        self._buckets.clear()
        self._count = 0
        self._queued_cost = 0
        return finished

    # --- the loop ---------------------------------------------------------------------------
    def _oldest_key(self) -> Hashable:
        return min(self._buckets, key=lambda k: self._buckets[k][0].enqueued)

    async def _loop(self) -> None:
        while True:
            if not self._count:
                self._idle.set()
                self._changed.clear()
                await self._changed.wait()
                continue
            key = self._oldest_key()
            bucket = self._buckets[key]
            while self._room(bucket) and not self._closing:
                remaining = bucket[0].enqueued + self.max_wait_s - self._clock()
                if remaining <= 0:
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=remaining)
                except asyncio.TimeoutError:
                    break
            taken = self._take(bucket)
            if not bucket:
                del self._buckets[key]
            self._count -= len(taken)
            self._queued_cost -= sum(e.cost for e in taken)
            try:
                self.hooks.depth(self._count)
                live = await self._filter(taken)
                if live:
                    await self._execute(live)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failing hook must not kill the loop and strand every later request
                for entry in taken:
                    if not entry.future.done():
                        entry.future.set_exception(exc)

    def _room(self, bucket: deque[_Entry[I, O]]) -> bool:
        """True while the bucket could take one more request into its batch."""
        if len(bucket) >= self.max_batch_size:
            return False
        return self.max_batch_cost is None or sum(e.cost for e in bucket) < self.max_batch_cost

    def _take(self, bucket: deque[_Entry[I, O]]) -> list[_Entry[I, O]]:
        """The oldest requests of the bucket up to the count and cost caps (always at least one)."""
        taken = [bucket.popleft()]
        cost = taken[0].cost
        while bucket and len(taken) < self.max_batch_size:
            if self.max_batch_cost is not None and cost + bucket[0].cost > self.max_batch_cost:
                break
            cost += bucket[0].cost
            taken.append(bucket.popleft())
        return taken

    async def _filter(self, entries: list[_Entry[I, O]]) -> list[_Entry[I, O]]:
        """Drop requests that expired, were abandoned, or whose client disconnected."""
        now = self._clock()
        live = []
        for entry in entries:
            if entry.future.done():  # cancelled by its handler (deadline or disconnect)
                continue
            if now >= entry.deadline:
                self.hooks.dropped("expired")
                entry.future.set_exception(DeadlineExceeded("expired in the queue"))
                continue
            if entry.alive is not None and not await _safe_alive(entry.alive):
                self.hooks.dropped("disconnected")
                entry.future.set_exception(Disconnected("client went away while queued"))
                continue
            live.append(entry)
        return live

    async def _execute(self, batch: list[_Entry[I, O]]) -> None:
        start = self._clock()
        waits = [start - e.enqueued for e in batch]
        self.running = len(batch)
        try:
            outputs = await self._run_batch([e.item for e in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"batch returned {len(outputs)} outputs for {len(batch)} inputs")
        except asyncio.CancelledError:
            for e in batch:
                if not e.future.done():
                    self.hooks.rejected("draining")
                    e.future.set_exception(Draining("shut down while this request ran"))
            raise
        except Exception as exc:  # one failed batch fails its own requests and nothing else
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(exc)
            return
        finally:
            self.running = 0
        self.hooks.batch(len(batch), self._clock() - start, waits)
        for e, out, wait in zip(batch, outputs, waits):
            if e.future.done():
                continue
            if isinstance(out, BaseException):  # this request's own failure
                e.future.set_exception(out)
            else:
                e.future.set_result((out, wait))


async def _safe_alive(alive: Callable[[], Awaitable[bool]]) -> bool:
    try:
        return bool(await alive())
    except Exception:
        return True  # cannot tell: compute rather than drop a live request
