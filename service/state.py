"""The running service's parts: per-task engines and lanes, the device queue, the decode pools.

Built inside the app factory's lifespan (no module-level state), or by the CLI. The state exists
before the models do: `boot` loads them in a worker thread (the port is already open, `/readyz`
says what is loading), wires them to their batchers and metrics, starts the decode workers, warms
every task on the inference thread, and only then is the service ready. Every step is reported
through `service.startup` (log lines with durations, the `/readyz` body); a step that fails ends
the start-up (`StartupProgress.fail`), it never leaves the service "not ready" forever.
`service.pipeline` is the request path that uses these parts; this module only builds, starts,
stops and reports on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

from service.errors import StartupError
from service.http.bodies import UploadBudget
from service.intake.decoding import DecodePool
from service.library_warnings import route_warnings_to_log
from service.logs import log_event
from service.metrics import Metrics
from service.runtime.base import Backend
from service.runtime.devices import configure_inference_thread, release_cached_memory
from service.scheduling.batcher import Batcher, BatcherHooks
from service.scheduling.device_queue import LARGE, SMALL, DeviceQueue
from service.scheduling.engine import Engine, EngineLimits, Job
from service.scheduling.faults import is_out_of_memory, is_sticky_device_error
from service.scheduling.tiling import TilingCancelled
from service.settings import Settings
from service.startup import FAILED, READY, WARMING, StartupProgress, reporting, step

SMALL_DECODE_WORKERS = 2
T = TypeVar("T")
DECODE_ALLOWANCE_S = 0.2
"""How long a tile may be held for small requests still decoding (on top of the batching window)."""


def apply_thread_limit(settings: Settings) -> int | None:
    """Intra-op threads from DIFFIR_TORCH_THREADS or the container's CPU limit (`service.runtime.threads`)."""
    from service.runtime.threads import choose_threads

    choice = choose_threads(settings.torch_threads)
    if choice.threads is not None:
        torch.set_num_threads(choice.threads)
    log_event("threads", threads=torch.get_num_threads(), source=choice.source)
    return choice.threads


def load_backends(settings: Settings) -> dict[str, Backend]:
    """Load every configured task's model (synchronously); the first problem raises `StartupError`.

    Each task is a start-up step ("loading task 2 of 3 (sr-x4)"), with the tuning and exports inside it.
    """
    from service.runtime.devices import resolve_device
    from service.runtime.loader import default_task_settings, load_backend

    apply_thread_limit(settings)
    try:
        device = resolve_device(settings.device)
    except RuntimeError as exc:
        raise StartupError(str(exc)) from None
    specs = settings.tasks or default_task_settings()
    if not specs:
        raise StartupError("no tasks configured (DIFFIR_TASKS is an empty object)")
    loaded = {}
    for i, (name, spec) in enumerate(specs.items(), 1):
        with step("load", f"loading task {i} of {len(specs)} ({name})", task=name, index=i, of=len(specs)):
            loaded[name] = load_backend(name, spec, settings, device)
    return loaded


def precheck(settings: Settings) -> None:
    """The faults found in milliseconds (no device, a missing model file), as one `StartupError` line
    before serving; everything slower is found by `load_backends` while the port already answers."""
    from service.runtime.devices import resolve_device
    from service.runtime.loader import check_sources, default_task_settings

    try:
        resolve_device(settings.device)
    except RuntimeError as exc:
        raise StartupError(str(exc)) from None
    specs = settings.tasks or default_task_settings()
    if not specs:
        raise StartupError("no tasks configured (DIFFIR_TASKS is an empty object)")
    check_sources(specs)


def batch_size_for(settings: Settings, backend: Backend) -> int:
    """DIFFIR_MAX_BATCH_SIZE, or by default 8 on a GPU and 1 on a CPU.

    Measured on the 2-core CPU (bench/results/service.md): a batch of 4 costs more per image than
    single calls, so batching only pays off where the device has spare parallelism (GPUs).
    """
    if settings.max_batch_size is not None:
        return settings.max_batch_size
    return 8 if backend.provider.lower().startswith("cuda") else 1


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """`fn()` on a thread of its own that does not hold the process up at exit: a stop signal while a model
    loads ends the process at once (the loop's own executor would wait for the load to finish first)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(outcome: Callable[[], None]) -> None:
        if not done.done():
            outcome()

    def run() -> None:
        try:
            result = context.run(fn)
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
            outcome = lambda: done.set_exception(error)  # noqa: E731
        else:
            outcome = lambda: done.set_result(result)  # noqa: E731
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="diffir-load", daemon=True).start()
    return await done


@dataclass
class TaskRuntime:
    """One task: its engine and two lanes, so one huge image never blocks the small ones.

    `batcher` takes ordinary requests (batched by shape bucket, capped by count and pixels).
    `large` takes inputs big enough to be tiled, one at a time; each of their tiles, and each window
    of their prior, is a separate unit on the device queue, behind any waiting batch of small requests.
    """

    name: str
    engine: Engine
    batcher: Batcher[Job, torch.Tensor]
    large: Batcher[Job, torch.Tensor]

    def lane(self, tiled: bool) -> Batcher[Job, torch.Tensor]:
        return self.large if tiled else self.batcher

    @property
    def depth(self) -> int:
        return self.batcher.depth + self.large.depth


class ServiceState:
    """`backends` already loaded (tests, the local CLI), or None: `boot` loads them after the port opened."""

    def __init__(self, settings: Settings, metrics: Metrics, backends: dict[str, Backend] | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.startup = StartupProgress()
        self.loaded = False
        """True once every task's model is loaded and wired (`tasks` is complete)."""
        self._running = False
        route_warnings_to_log()
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="diffir-infer", initializer=configure_inference_thread
        )
        self.warmed = False
        self._warm_error: str | None = None
        self.draining = False
        self.device_error: str | None = None
        """Set after a sticky accelerator fault: health and readiness report it, requests get 503."""
        self.tasks: dict[str, TaskRuntime] = {}
        self.device = DeviceQueue(
            self.executor,
            small_pending=lambda: self.small_on_the_way > 0 or any(rt.batcher.depth for rt in self.tasks.values()),
            hold_s=settings.max_wait_ms / 1000 + DECODE_ALLOWANCE_S,
        )
        self.small_on_the_way = 0
        """Admitted untiled requests still decoding (they will join a batch in a moment)."""
        memory = settings.decode_memory_mb * 2**20 if settings.decode_memory_mb else None
        self.small_decoder = DecodePool(
            SMALL_DECODE_WORKERS, memory, on_wait_change=lambda n: metrics.decode_queue.labels("small").set(n)
        )
        self.large_decoder = DecodePool(
            settings.decode_concurrency,
            memory,
            niceness=10,  # a bomb in the large lane yields the CPU to inference and to the small lane
            on_wait_change=lambda n: metrics.decode_queue.labels("large").set(n),
        )
        self.uploads = UploadBudget(settings.max_upload_bytes_in_flight, metrics.upload_bytes.set)
        self._decoders_started: asyncio.Task[None] | None = None
        limits = EngineLimits(
            settings.tile_size,
            settings.tile_overlap,
            settings.tile_threshold_pixels,
            settings.bucket_multiple,
            settings.prior_max_pixels,
        )
        self._limits = limits
        for lane in ("small", "large"):
            metrics.decode_queue.labels(lane).set(0)
        if backends is not None:
            self.add_tasks(backends)

    def add_tasks(self, backends: dict[str, Backend]) -> None:
        """Wire loaded models to their engines, lanes and metrics (lanes start at once when the state runs)."""
        metrics = self.metrics
        for name, backend in backends.items():
            engine = Engine(name, backend, self._limits)
            rt = TaskRuntime(name, engine, self._batcher(engine), self._batcher(engine, large=True))
            self.tasks[name] = rt
            metrics.model_info.labels(
                name, backend.info.variant, backend.name, backend.provider, backend.info.version
            ).set(1)
            metrics.record_tuning(name, getattr(backend, "tuning", None))
            metrics.queue_depth.labels(name).set(0)
            metrics.init_task(name)
            if self._running:
                rt.batcher.start()
                rt.large.start()
        self.loaded = True
        self.startup.set_phase(WARMING)

    def _batcher(self, engine: Engine, large: bool = False) -> Batcher[Job, torch.Tensor]:
        m, name, backend = self.metrics, engine.name, engine.backend.name

        def on_depth(_: int) -> None:
            rt = self.tasks.get(name)
            m.queue_depth.labels(name).set(rt.depth if rt else 0)

        def on_batch(size: int, seconds: float, waits: list[float]) -> None:
            m.batch_size.labels(name).observe(size)
            m.inference.labels(name, backend).observe(seconds)
            for w in waits:
                m.queue_wait.labels(name).observe(w)

        def on_dropped(reason: str) -> None:
            if reason == "disconnected":
                m.disconnected.labels(name).inc()
            m.rejected.labels(name, reason).inc()

        hooks = BatcherHooks(
            depth=on_depth,
            rejected=lambda reason: m.rejected.labels(name, reason).inc(),
            dropped=on_dropped,
            batch=on_batch,
        )

        async def run_batch(jobs: list[Job]) -> list[torch.Tensor]:
            started = time.perf_counter()
            outputs = await self._run_small(engine, jobs)
            elapsed = time.perf_counter() - started
            for job in jobs:
                job.timings["inference"] = elapsed
            return outputs

        async def run_large(jobs: list[Job]) -> list[torch.Tensor]:
            (job,) = jobs
            started = time.perf_counter()
            run = await self._on_device(engine.start_tiled, job, priority=LARGE)
            while True:
                if job.cancelled.is_set():  # the request gave up (client left, deadline): drop the rest
                    raise TilingCancelled(f"abandoned after {run.done} of {run.total} units (prior windows, tiles)")
                tile = run.done >= run.prior.units
                more = await self._on_device(engine.step_tiled, run, priority=LARGE)
                if tile:
                    m.tiles.labels(name).inc()
                if not more:
                    break
            out = await self._on_device(engine.finish_tiled, job, run, priority=LARGE)
            job.timings["inference"] = time.perf_counter() - started
            job.timings["batch"] = 1
            return [out]

        s = self.settings
        if large:
            return Batcher(
                run_large,
                key=lambda job: "large",
                max_batch_size=1,
                max_wait_s=0.0,
                queue_size=s.large_queue_size,
                cost=engine.cost,
                max_queued_cost=s.max_queued_pixels,
                hooks=hooks,
            )
        return Batcher(
            run_batch,
            key=engine.bucket,
            max_batch_size=batch_size_for(s, engine.backend),
            max_wait_s=s.max_wait_ms / 1000,
            queue_size=s.queue_size,
            cost=engine.cost,
            max_queued_cost=s.max_queued_pixels,
            max_batch_cost=s.max_batch_pixels,
            hooks=hooks,
        )

    async def _on_device(self, fn, *args, priority: int):  # type: ignore[no-untyped-def]
        """Run one unit on the inference thread; a sticky device fault marks the service unhealthy."""
        try:
            return await self.device.run(fn, *args, priority=priority)
        except Exception as exc:
            if is_sticky_device_error(exc):
                self.mark_device_failed(exc)
            raise

    async def _run_small(self, engine: Engine, jobs: list[Job]) -> list[torch.Tensor]:
        """One batch; out of memory retries it in halves (a single request that does not fit fails).

        The halves run after the `except` block, not inside it: while an exception is handled, its
        traceback keeps the failed call's frames, and with them the failed batch's activations, alive.
        Between the failure and the halves `release_cached_memory` collects what the failure left in reference
        cycles (the device queue's future holds the traceback too) and empties the CUDA cache, on the
        inference thread, so the halves start from free memory."""
        try:
            outputs = await self._on_device(engine.run_batch, jobs, priority=SMALL)
            for job in jobs:
                job.timings["batch"] = len(jobs)  # the batch that really ran (after any split)
            return outputs
        except Exception as exc:
            if not is_out_of_memory(exc) or len(jobs) == 1:
                raise
        log_event("out of memory; retrying the batch in halves", logging.WARNING, task=engine.name, batch=len(jobs))
        await self._on_device(release_cached_memory, priority=SMALL)
        half = len(jobs) // 2
        return [*await self._run_small(engine, jobs[:half]), *await self._run_small(engine, jobs[half:])]

    def mark_device_failed(self, exc: BaseException) -> None:
        if self.device_error is None:
            self.device_error = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            self.metrics.device_healthy.set(0)
            self.metrics.ready.set(0)
            log_event("sticky device fault: the service reports unhealthy", logging.ERROR, error=self.device_error)

    @property
    def healthy(self) -> bool:
        return self.device_error is None

    @property
    def ready(self) -> bool:
        return self.warmed and not self.draining and self.healthy

    def set_draining(self) -> None:
        self.draining = True
        self.metrics.ready.set(0)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self.device.start()
        for rt in self.tasks.values():
            rt.batcher.start()
            rt.large.start()
        self._decoders_started = asyncio.get_running_loop().create_task(self._start_decoders())

    async def boot(self) -> bool:
        """Load the models (unless given), warm every task, turn ready; False (logged, `startup.error`) on
        the first failure. Start-up lines every few seconds meanwhile (`StartupProgress.start_heartbeat`)."""
        self.startup.start_heartbeat()
        try:
            if not self.loaded:

                def load() -> dict[str, Backend]:
                    with reporting(self.startup):
                        return load_backends(self.settings)

                try:
                    backends = await in_daemon_thread(load)
                except StartupError as exc:
                    self.startup.fail(str(exc))
                    return False
                except Exception as exc:  # a bug rather than a bad model: still one line, never a hang
                    self.startup.fail(f"{type(exc).__name__}: {exc}")
                    return False
                self.add_tasks(backends)
            self.startup.set_phase(WARMING)
            if not await self.warm_up():
                self.startup.fail(self._warm_error or "warm-up failed")
                return False
            if self.ready:
                self.startup.ready()
            return True
        finally:
            self.startup.stop_heartbeat()

    @property
    def startup_failed(self) -> bool:
        return self.startup.phase == FAILED

    async def _start_decoders(self) -> None:
        await asyncio.gather(self.small_decoder.start(), self.large_decoder.start())

    async def warm_up(self) -> bool:
        """Start the decode workers, then warm every task at batch 1 and at the max batch; False on a failure."""
        self._warm_error = None
        if self._decoders_started is not None:
            try:
                await self._decoders_started
            except Exception as exc:
                self._warm_error = f"decode workers failed to start: {exc!r}"
                log_event("decode workers failed to start; the service stays not ready", 40, error=repr(exc))
                return False
        size = self.settings.warmup_size
        for i, rt in enumerate(self.tasks.values(), 1):
            started = time.perf_counter()
            batches = (1, rt.batcher.max_batch_size)
            try:
                with self.startup.step("warm", f"warming task {i} of {len(self.tasks)} ({rt.name})", task=rt.name):
                    await self._on_device(rt.engine.warmup, size, batches, priority=SMALL)
            except Exception as exc:  # stay not-ready (readyz never lies) and say why
                self._warm_error = f"warm-up of task {rt.name!r} failed: {exc!r}"
                log_event("warm-up failed; the service stays not ready", 40, task=rt.name, error=repr(exc))
                return False
            log_event("warmed", task=rt.name, seconds=round(time.perf_counter() - started, 3))
        self.warmed = True
        if not self.draining and self.healthy:
            self.metrics.ready.set(1)
        return True

    def readiness(self) -> dict[str, object]:
        """The `/readyz` body: "ready", or what the service is doing instead (start-up progress, drain, fault)."""
        if self.ready:
            return {"status": READY}
        if self.device_error is not None:
            return {"status": "device_failed", "error": self.device_error}
        if self.draining:
            return {"status": "draining"}
        return self.startup.snapshot()

    async def stop(self) -> None:
        self.set_draining()
        lanes = [lane for rt in self.tasks.values() for lane in (rt.batcher, rt.large)]
        results = await asyncio.gather(*(lane.close(self.settings.drain_seconds) for lane in lanes))
        if not all(results):
            log_event("drain timed out; unfinished requests were failed", level=30)
        await self.device.close()
        if self._decoders_started is not None and not self._decoders_started.done():
            self._decoders_started.cancel()
        await asyncio.gather(self.small_decoder.close(), self.large_decoder.close(), return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)
