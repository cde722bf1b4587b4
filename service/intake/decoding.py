"""Decode uploads in worker processes that are killed past their time budget.

Why processes: a decoder inside a C library (libjpeg, libwebp, zlib) cannot be interrupted from
Python, so a thread that decodes a hostile file holds its slot, its memory and a core for as long as
the file wants (a 2 MB progressive JPEG of 160,000 scans: 90 s). A worker process can be killed the
moment its budget is spent; the next job forks a fresh one from the fork server. Each worker also runs under
an address-space limit (`RLIMIT_AS`), so a decode that needs more memory fails alone (413
`decode_too_large`) instead of the server. The cheap structural limits of `imaging.containers` catch
the known slow shapes before a worker is involved; the budget is the backstop for every other one.

Two lanes: uploads whose header declares few pixels use their own small pool, so a 32 x 32 request
never waits behind four bombs that occupy the large lane. A small header bounds the cost of a file
that passed the container limits (pixels x scans), which is what makes the small lane's wait short.
Warnings a decoder raises in a worker come back with the reply (at most `MAX_WARNINGS`, each
truncated) and are logged by the server as JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from service.errors import ServiceError, describe_exception

MAX_WARNINGS = 8
STARTUP_TIMEOUT_S = 120.0
WARNING_CHARS = 300
_CONTEXT: Any = None


class DecodeTimeout(Exception):
    """The worker did not answer within the budget; it was killed."""


class WorkerCrashed(Exception):
    """The worker died while decoding (killed by the kernel, or a fault in a C decoder)."""


def _context() -> Any:
    """One fork server for every pool of the process: it imports the decoders once, then forks workers."""
    global _CONTEXT
    if _CONTEXT is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["service.intake.decode_jobs"])
        _CONTEXT = ctx
    return _CONTEXT


def _serve(conn: Connection, memory_bytes: int | None, niceness: int) -> None:
    """Worker main loop: (job name, args) in, ("ok", result, warnings) or ("error", code, text, warnings) out."""
    import resource

    from service.intake import decode_jobs

    if niceness:
        os.nice(niceness)
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    caught: list[str] = []

    def keep(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        if len(caught) < MAX_WARNINGS:
            caught.append(f"{category.__name__}: {message}"[:WARNING_CHARS])

    warnings.simplefilter("always")  # never remembered per text: the registry cannot grow
    warnings.showwarning = keep
    conn.send(("ready",))
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, OSError):
            return
        caught.clear()
        try:
            reply: tuple = ("ok", decode_jobs.JOBS[name](*args))
        except ServiceError as exc:
            reply = ("error", exc.code, exc.message)
        except MemoryError:
            reply = ("error", "decode_too_large", "decoding needs more memory than the decode budget")
        except Exception as exc:  # a decoder bug on hostile bytes is still the file's fault
            reply = ("error", "undecodable_image", f"the image could not be decoded ({describe_exception(exc)})")
        try:
            conn.send((*reply, list(caught)))
        except MemoryError:
            conn.send(("error", "decode_too_large", "the decoded image exceeds the decode memory budget", []))


class _Worker:
    def __init__(self, memory_bytes: int | None, niceness: int) -> None:
        ctx = _context()
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, memory_bytes, niceness), daemon=True)
        self.proc.start()
        child.close()
        # a worker imports the parent's __main__ module first (multiprocessing's rule): wait until it can serve
        if not self.conn.poll(STARTUP_TIMEOUT_S) or self.conn.recv() != ("ready",):
            self.kill()
            raise RuntimeError(f"a decode worker did not start within {STARTUP_TIMEOUT_S:g} s")

    def call(self, name: str, args: tuple, timeout_s: float) -> tuple:
        """Blocking round trip (runs in a thread); DecodeTimeout / WorkerCrashed on failure."""
        try:
            self.conn.send((name, args))
            if not self.conn.poll(max(timeout_s, 0.0)):
                raise DecodeTimeout(f"no answer within {timeout_s:.3g} s")
            return self.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            raise WorkerCrashed(describe_exception(exc)) from None

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.join(5)
        with contextlib.suppress(Exception):
            self.conn.close()


@dataclass
class DecodePool:
    """Up to `size` workers, started on demand (`start` pre-starts `warm` of them); a worker that
    overruns its budget or crashes is killed, and the next job that needs one starts a fresh one."""

    size: int
    memory_bytes: int | None
    niceness: int = 0
    warm: int = 1
    on_wait_change: Callable[[int], None] = lambda waiting: None
    waiting: int = 0
    _slots: asyncio.Semaphore | None = None
    _idle: list[_Worker] = field(default_factory=list)
    _threads: ThreadPoolExecutor | None = None
    _all: set[_Worker] = field(default_factory=set)
    _killing: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.size)
        self._threads = ThreadPoolExecutor(self.size, thread_name_prefix="diffir-decode")
        workers = await asyncio.gather(*(self._new() for _ in range(min(self.warm, self.size))))
        self._idle.extend(workers)

    async def _new(self) -> _Worker:
        worker = await asyncio.to_thread(_Worker, self.memory_bytes, self.niceness)
        self._all.add(worker)
        return worker

    async def _worker(self) -> _Worker:
        if self._idle:
            return self._idle.pop()
        starting = asyncio.ensure_future(self._new())
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:  # keep the worker being started for the next job
            starting.add_done_callback(lambda f: f.cancelled() or f.exception() or self._idle.append(f.result()))
            raise

    def _discard(self, worker: _Worker) -> None:
        self._all.discard(worker)
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(worker.kill))
        self._killing.add(task)
        task.add_done_callback(self._killing.discard)

    async def run(self, name: str, args: tuple, budget_s: float) -> tuple[Any, list[str]]:
        """(result, warnings); ServiceError from the job; DecodeTimeout / WorkerCrashed from the budget."""
        assert self._slots is not None, "start() the pool first"
        started = time.monotonic()
        self.waiting += 1
        self.on_wait_change(self.waiting)
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=max(budget_s, 0.0))
        except asyncio.TimeoutError:
            raise DecodeTimeout(f"no decode worker became free within {budget_s:.3g} s") from None
        finally:
            self.waiting -= 1
            self.on_wait_change(self.waiting)
        try:
            worker = await self._worker()
            left = budget_s - (time.monotonic() - started)
            try:
                reply = await asyncio.get_running_loop().run_in_executor(self._threads, worker.call, name, args, left)
            except (DecodeTimeout, WorkerCrashed, asyncio.CancelledError):
                self._discard(worker)  # killed in the background; the answer goes out now
                raise
            self._idle.append(worker)
        finally:
            self._slots.release()
        status, *rest = reply
        *payload, caught = rest
        if status == "error":
            code, text = payload
            err = ServiceError(code, text)
            err.warnings = caught  # type: ignore[attr-defined]
            raise err
        return payload[0], caught

    async def close(self) -> None:
        await asyncio.gather(*self._killing, return_exceptions=True)
        workers, self._all, self._idle = list(self._all), set(), []
        await asyncio.gather(*(asyncio.to_thread(w.kill) for w in workers))
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
