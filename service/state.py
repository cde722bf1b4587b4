"""The running service's parts: per-task engines and lanes, the device queue, the decode pools.

Built inside the app factory's lifespan (no module-level state), or by the CLI: models are loaded,
wired to their batchers and metrics, the decode workers are started, every task is warmed on the
inference thread, and only then is the service ready. `service.pipeline` is the request path
that uses these parts; this module only builds, starts, stops and reports on them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from service.batcher import Batcher, BatcherHooks
from service.bodies import UploadBudget
from service.decoding import DecodePool
from service.device_queue import LARGE, SMALL, DeviceQueue
from service.engine import Engine, EngineLimits, Job
from service.errors import StartupError
from service.faults import is_out_of_memory, is_sticky_device_error
from service.library_warnings import route_warnings_to_log
from service.logs import log_event
from service.metrics import Metrics
from service.runtime.base import Backend
from service.runtime.devices import configure_inference_thread
from service.settings import Settings
from service.tiling import TilingCancelled

SMALL_DECODE_WORKERS = 2
DECODE_ALLOWANCE_S = 0.2
"""How long a tile may be held for small requests still decoding (on top of the batching window)."""


def load_backends(settings: Settings) -> dict[str, Backend]:
    """Load every configured task's model (synchronously); the first problem raises `StartupError`."""
    from service.runtime.devices import resolve_device
    from service.runtime.loader import default_task_settings, load_backend

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    try:
        device = resolve_device(settings.device)
    except RuntimeError as exc:
        raise StartupError(str(exc)) from None
    specs = settings.tasks or default_task_settings()
    if not specs:
        raise StartupError("no tasks configured (DIFFIR_TASKS is an empty object)")
    return {name: load_backend(name, spec, settings, device) for name, spec in specs.items()}


def batch_size_for(settings: Settings, backend: Backend) -> int:
    """DIFFIR_MAX_BATCH_SIZE, or by default 8 on a GPU and 1 on a CPU.

    Measured on the 2-core CPU (bench/results/service.md): a batch of 4 costs more per image than
    single calls, so batching only pays off where the device has spare parallelism (GPUs).
    """
    if settings.max_batch_size is not None:
        return settings.max_batch_size
    return 8 if backend.provider.lower().startswith("cuda") else 1


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
    def __init__(self, settings: Settings, metrics: Metrics, backends: dict[str, Backend]) -> None:
        self.settings = settings
        self.metrics = metrics
        route_warnings_to_log()
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="diffir-infer", initializer=configure_inference_thread
        )
        self.warmed = False
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
        for name, backend in backends.items():
            engine = Engine(name, backend, limits)
            self.tasks[name] = TaskRuntime(name, engine, self._batcher(engine), self._batcher(engine, large=True))
            metrics.model_info.labels(
                name, backend.info.variant, backend.name, backend.provider, backend.info.version
            ).set(1)
            metrics.record_tuning(name, getattr(backend, "tuning", None))
            metrics.queue_depth.labels(name).set(0)
            metrics.init_task(name)
        for lane in ("small", "large"):
            metrics.decode_queue.labels(lane).set(0)

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
                cost=lambda job: job.size[0] * job.size[1],
                max_queued_cost=s.max_queued_pixels,
                hooks=hooks,
            )
        return Batcher(
            run_batch,
            key=engine.bucket,
            max_batch_size=batch_size_for(s, engine.backend),
            max_wait_s=s.max_wait_ms / 1000,
            queue_size=s.queue_size,
            cost=lambda job: job.size[0] * job.size[1],
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
        """One batch; out of memory retries it in halves (a single request that does not fit fails)."""
        try:
            outputs = await self._on_device(engine.run_batch, jobs, priority=SMALL)
            for job in jobs:
                job.timings["batch"] = len(jobs)  # the batch that really ran (after any split)
            return outputs
        except Exception as exc:
            if not is_out_of_memory(exc) or len(jobs) == 1:
                raise
            log_event("out of memory; retrying the batch in halves", logging.WARNING, task=engine.name, batch=len(jobs))
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
        self.device.start()
        for rt in self.tasks.values():
            rt.batcher.start()
            rt.large.start()
        self._decoders_started = asyncio.get_running_loop().create_task(self._start_decoders())

    async def _start_decoders(self) -> None:
        await asyncio.gather(self.small_decoder.start(), self.large_decoder.start())

    async def warm_up(self) -> None:
        """Start the decode workers, then warm every task at batch 1 and at the max batch."""
        if self._decoders_started is not None:
            try:
                await self._decoders_started
            except Exception as exc:
                log_event("decode workers failed to start; the service stays not ready", 40, error=repr(exc))
                return
        size = self.settings.warmup_size
        for rt in self.tasks.values():
            started = time.perf_counter()
            batches = (1, rt.batcher.max_batch_size)
            try:
                await self._on_device(rt.engine.warmup, size, batches, priority=SMALL)
            except Exception as exc:  # stay not-ready (readyz never lies) and say why
                log_event("warm-up failed; the service stays not ready", 40, task=rt.name, error=repr(exc))
                return
            log_event("warmed", task=rt.name, seconds=round(time.perf_counter() - started, 3))
        self.warmed = True
        if not self.draining and self.healthy:
            self.metrics.ready.set(1)

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
