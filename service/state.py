"""The running service's state: one engine + batcher per task, the inference thread, readiness.

Built inside the app factory's lifespan (no module-level state): models are loaded, wired to
their batchers and metrics, warmed on the inference thread, and only then is the service ready.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from service.batcher import Batcher, BatcherHooks
from service.engine import Engine, EngineLimits, Job
from service.errors import StartupError
from service.logs import log_event
from service.metrics import Metrics
from service.runtime.base import Backend
from service.runtime.devices import configure_inference_thread
from service.settings import Settings
from service.tiling import TilingCancelled


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

    Measured on the 2-core CPU (bench/results/service.md): a batch of 4 costs 1.08x (shipped
    weights) to 1.5-1.9x (random weights, busier machine) the per-image time of single calls, so
    batching only pays off where the device has spare parallelism (GPUs).
    """
    if settings.max_batch_size is not None:
        return settings.max_batch_size
    return 8 if backend.provider.lower().startswith("cuda") else 1


@dataclass
class TaskRuntime:
    """One task: its engine and two lanes, so one huge image never blocks the small ones.

    `batcher` takes ordinary requests (batched by shape bucket). `large` takes inputs big enough
    to be tiled, one at a time; each of their tiles is a separate job on the inference thread, so
    batches from `batcher` (and from other tasks) run in between the tiles.
    """

    name: str
    engine: Engine
    batcher: Batcher[Job, torch.Tensor]
    large: Batcher[Job, torch.Tensor]

    def lane(self, job: Job) -> Batcher[Job, torch.Tensor]:
        return self.large if self.engine.tiled(job) else self.batcher

    @property
    def depth(self) -> int:
        return self.batcher.depth + self.large.depth


class ServiceState:
    def __init__(self, settings: Settings, metrics: Metrics, backends: dict[str, Backend]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="diffir-infer", initializer=configure_inference_thread
        )
        self.decode_slots = asyncio.Semaphore(settings.decode_concurrency)
        self.warmed = False
        self.draining = False
        self.tasks: dict[str, TaskRuntime] = {}
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
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            outputs = await loop.run_in_executor(self.executor, engine.run_batch, jobs)
            elapsed = time.perf_counter() - started
            for job in jobs:
                job.timings["inference"] = elapsed
                job.timings["batch"] = len(jobs)
            return outputs

        async def run_large(jobs: list[Job]) -> list[torch.Tensor]:
            (job,) = jobs
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            run = await loop.run_in_executor(self.executor, engine.start_tiled, job)
            while True:
                if job.cancelled.is_set():
                    raise TilingCancelled(f"abandoned after {run.done} of {run.total} tiles")
                if not await loop.run_in_executor(self.executor, engine.step_tiled, run):
                    break
            out = await loop.run_in_executor(self.executor, engine.finish_tiled, job, run)
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
            hooks=hooks,
        )

    @property
    def ready(self) -> bool:
        return self.warmed and not self.draining

    def set_draining(self) -> None:
        self.draining = True
        self.metrics.ready.set(0)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        for rt in self.tasks.values():
            rt.batcher.start()
            rt.large.start()

    async def warm_up(self) -> None:
        """Warm every task at batch 1 and at the max batch, on the inference thread."""
        loop = asyncio.get_running_loop()
        size = self.settings.warmup_size
        for rt in self.tasks.values():
            started = time.perf_counter()
            batches = (1, rt.batcher.max_batch_size)
            try:
                await loop.run_in_executor(self.executor, rt.engine.warmup, size, batches)
            except Exception as exc:  # stay not-ready (readyz never lies) and say why
                log_event("warm-up failed; the service stays not ready", 40, task=rt.name, error=repr(exc))
                return
            log_event("warmed", task=rt.name, seconds=round(time.perf_counter() - started, 3))
        self.warmed = True
        if not self.draining:
            self.metrics.ready.set(1)

    async def stop(self) -> None:
        self.set_draining()
        lanes = [lane for rt in self.tasks.values() for lane in (rt.batcher, rt.large)]
        results = await asyncio.gather(*(lane.close(self.settings.drain_seconds) for lane in lanes))
        if not all(results):
            log_event("drain timed out; unfinished requests were failed", level=30)
        self.executor.shutdown(wait=False, cancel_futures=True)
