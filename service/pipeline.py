"""The request path, top to bottom: admission -> decode -> schedule -> run -> encode.

`restore(state, request)` is the one pipeline; the HTTP route (`service.http.restore`) and the CLI
(`service.cli`) both call it, so a file restored locally is byte-identical to the server's answer.

1. Admission (cheap, no pixels): the task exists, the service is not draining or broken; the image
   header, read from the upload's first bytes only (a decode worker reads one that lies further),
   passes the structural limits, the input and output pixel caps and the ICC cap, the output
   format can hold its sides; an inpaint mask's header has the image's size. The header's size
   decides, once, whether the image is restored whole (batched) or tile by tile, and so which
   deadline applies.
2. Decode, in a worker process killed past its budget (`service.intake.decoding`), in the small or large
   lane by header size; pixels come back at native depth and become float here.
3. Schedule: the job joins its task's batcher (small) or large lane (tiled). Model work of every
   task runs on one device queue where batches go before tiles (`service.scheduling.device_queue`).
4. Run, 5. encode in a thread.

One deadline (from admission) covers steps 2-5: 504 `deadline_exceeded` when it passes. The
caller cancels the coroutine when its client leaves; the job is then marked cancelled, so a tiled
restoration stops before its next tile and a queued job is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool

from service.errors import ServiceError
from service.imaging import choose_format, encode_image
from service.imaging.decode import DecodedImage, DecodeLimits, ImageHeader, check_mask_header, to_float
from service.imaging.formats import MAX_SIDE
from service.intake.decoding import DecodeTimeout, WorkerCrashed
from service.intake.headers import upload_header
from service.library_warnings import request_fields
from service.logs import log_event
from service.runtime.base import Backend
from service.scheduling.batcher import DeadlineExceeded, Disconnected, Draining, QueueFull
from service.scheduling.cost import shape_refusal
from service.scheduling.engine import Job
from service.scheduling.faults import NonFiniteOutput, is_out_of_memory, is_sticky_device_error
from service.settings import Settings
from service.state import ServiceState, TaskRuntime


@dataclass
class RestoreRequest:
    task: str
    image: bytes
    mask: bytes | None = None
    seed: int = 0
    format: str | None = None
    quality: int | None = None
    request_id: str | None = None
    release_body: Callable[[], None] = lambda: None
    """Called once the bytes are decoded (the HTTP layer frees their share of the upload budget)."""
    timeout_s: float | None = None
    """The client's own deadline in seconds; the server's deadline still caps it."""


@dataclass
class RestoreResult:
    data: bytes
    media_type: str
    batch_size: int
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: decode, queue, inference, encode."""


@dataclass(frozen=True)
class Admitted:
    """What admission decided from the headers."""

    rt: TaskRuntime
    header: ImageHeader
    format: str
    tiled: bool
    deadline_s: float


def task_runtime(state: ServiceState, task: str, *, arriving: bool = True) -> TaskRuntime:
    """The task, or 404; then the service-wide refusals: a broken device, and for requests still
    arriving (not yet accepted) a drain in progress. An accepted request is finished during a drain."""
    rt = state.tasks.get(task)
    if rt is None:
        raise ServiceError("unknown_task", f"unknown task {task!r}; configured: {', '.join(state.tasks)}")
    retry = {"Retry-After": str(state.settings.retry_after_s)}
    if arriving and state.draining:
        raise ServiceError("draining", "the server is shutting down", retry)
    if state.device_error is not None:
        raise ServiceError("device_failed", f"the accelerator failed ({state.device_error}); restart pending", retry)
    return rt


def _limits(state: ServiceState, scale: int) -> tuple[DecodeLimits, DecodeLimits]:
    s = state.settings
    image = DecodeLimits(s.max_input_pixels, scale, s.max_output_pixels, s.max_jpeg_scans)
    return image, DecodeLimits(s.max_input_pixels, 1, None, s.max_jpeg_scans)


async def admit(state: ServiceState, req: RestoreRequest) -> Admitted:
    """Step 1: headers, never pixels; each read from a bounded prefix, else by a decode worker
    (`service.intake.headers`: the server process never walks a whole upload)."""
    rt = task_runtime(state, req.task, arriving=False)  # the caller accepted it (HTTP: before reading the body)
    info = rt.engine.info
    image_limits, mask_limits = _limits(state, info.scale)
    header = await upload_header(req.image, image_limits, "image", state.small_decoder)
    if info.needs_mask:
        if req.mask is None:
            raise ServiceError("missing_mask", "this task needs a `mask` file part (white = hole)")
        if not req.mask:
            raise ServiceError("missing_mask", "the mask part is empty")
        check_mask_header(await upload_header(req.mask, mask_limits, "mask", state.small_decoder), header)
    fmt = choose_format(req.format, header.format)
    side = max(header.width, header.height) * info.scale
    if side > MAX_SIDE[fmt]:
        raise ServiceError("bad_parameter", f"{fmt} holds at most {MAX_SIDE[fmt]} px per side; the output has {side}")
    refusal = shape_refusal(rt.engine.work(*header.size))  # cost by the padded work, not the pixel count
    if refusal is not None:
        raise ServiceError("shape_too_costly", refusal)
    tiled = rt.engine.tiles(*header.size)
    s = state.settings
    deadline_s = s.tiled_deadline_s if tiled else s.deadline_s
    if req.timeout_s is not None:
        deadline_s = min(deadline_s, req.timeout_s)
    return Admitted(rt, header, fmt, tiled, deadline_s)


async def _decode(state: ServiceState, req: RestoreRequest, ad: Admitted, budget_s: float) -> tuple[Job, DecodedImage]:
    """Step 2: a worker decodes; the budget is the decode timeout or what is left of the deadline."""
    image_limits, mask_limits = _limits(state, ad.rt.engine.info.scale)
    small = ad.header.pixels <= state.settings.small_decode_pixels
    pool = state.small_decoder if small else state.large_decoder
    mask = req.mask if ad.rt.engine.info.needs_mask else None
    args = (req.image, mask, image_limits, mask_limits, state.settings.mask_threshold)
    try:
        (raw, holes), caught = await pool.run("upload", args, budget_s)
    except DecodeTimeout:
        if budget_s < state.settings.decode_timeout_s:  # the request's deadline ran out, not the decode budget
            raise ServiceError("deadline_exceeded", f"not answered within {ad.deadline_s:g} s") from None
        raise ServiceError(
            "decode_too_slow", f"decoding did not finish within its budget of {budget_s:.3g} s"
        ) from None
    except WorkerCrashed:
        raise ServiceError("decode_too_large", "the decoder was stopped (out of its memory budget)") from None
    except ServiceError as err:
        _log_warnings(getattr(err, "warnings", []), req)
        raise
    _log_warnings(caught, req)
    req.image, req.mask = b"", None
    req.release_body()
    image = await run_in_threadpool(to_float, raw)
    del raw
    tensor = torch.from_numpy(image.take_pixels()).permute(2, 0, 1)[None]  # NCHW view, channels-last strides
    mask_tensor = torch.from_numpy(holes.astype(np.float32))[None, None] if holes is not None else None
    return Job(tensor, mask_tensor, req.seed), image


def _log_warnings(caught: list[str], req: RestoreRequest) -> None:
    for text in caught:
        log_event("decoder warning", logging.WARNING, request_id=req.request_id, task=req.task, warning=text)


def _encode(out: torch.Tensor, image: DecodedImage, fmt: str, quality: int | None, level: int) -> tuple[bytes, str]:
    rgb = out[0].permute(1, 2, 0).numpy().astype(np.float32, copy=False)
    return encode_image(rgb, image, fmt, quality=quality, png_level=level)


def _model_failure(exc: Exception, state: ServiceState) -> ServiceError:
    retry = {"Retry-After": str(state.settings.retry_after_s)}
    if is_sticky_device_error(exc):
        return ServiceError("device_failed", "the accelerator failed on this batch; the process must restart", retry)
    if is_out_of_memory(exc):
        return ServiceError("out_of_memory", "the device ran out of memory for this request alone", retry)
    if isinstance(exc, NonFiniteOutput):
        return ServiceError("internal_error", "the model returned non-finite values (NaN or inf) for this image")
    return ServiceError("internal_error", "restoring this request failed (its batch failed in the model)")


def _queue_error(exc: Exception, state: ServiceState) -> ServiceError:
    """The batcher's refusal as a `ServiceError`; the batcher has counted it already."""
    retry = {"Retry-After": str(state.settings.retry_after_s)}
    if isinstance(exc, QueueFull):
        return ServiceError("queue_full", str(exc), retry, counted=True)
    if isinstance(exc, Draining):
        return ServiceError("draining", str(exc), retry, counted=True)
    if isinstance(exc, DeadlineExceeded):
        return ServiceError("deadline_exceeded", str(exc), counted=True)
    return ServiceError("client_closed_request", str(exc), counted=True)


async def restore(state: ServiceState, req: RestoreRequest) -> RestoreResult:
    """Run one request through the pipeline; every refusal is a `ServiceError` with its code."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    request_fields.set({"request_id": req.request_id, "task": req.task})  # for warnings raised on our threads
    state.small_on_the_way += 1  # until it is queued, tiles give way to it (see DeviceQueue.small_pending)
    on_the_way = True

    def queued() -> None:
        nonlocal on_the_way
        if on_the_way:
            state.small_on_the_way -= 1
            on_the_way = False

    try:
        ad = await admit(state, req)
    except BaseException:
        queued()
        raise
    if ad.tiled:
        queued()
    loop = asyncio.get_running_loop()
    ends = loop.time() + ad.deadline_s
    job: Job | None = None
    finished = False
    try:
        async with asyncio.timeout_at(ends):
            budget = min(state.settings.decode_timeout_s, ends - loop.time())
            try:
                job, image = await _decode(state, req, ad, budget)
            finally:  # the batcher counts it from here on (submit enqueues before its first await)
                queued()
            timings["decode"] = time.perf_counter() - started
            state.metrics.decode_duration.labels(ad.rt.name).observe(timings["decode"])
            state.metrics.input_pixels.labels(ad.rt.name).observe(ad.header.pixels)
            try:
                out, waited = await ad.rt.lane(ad.tiled).submit(job, deadline_s=ends - loop.time())
            except (QueueFull, Draining, DeadlineExceeded, Disconnected) as exc:
                raise _queue_error(exc, state) from None
            except ServiceError:
                raise
            except Exception as exc:
                if not isinstance(exc, NonFiniteOutput) and not is_out_of_memory(exc):
                    log_event("restore failed", logging.ERROR, exc_info=True, request_id=req.request_id, task=req.task)
                raise _model_failure(exc, state) from None
            timings["queue"] = waited
            timings["inference"] = job.timings.get("inference", 0.0)
            t1 = time.perf_counter()
            level = state.settings.png_compress_level
            data, media_type = await run_in_threadpool(_encode, out, image, ad.format, req.quality, level)
            timings["encode"] = time.perf_counter() - t1
            finished = True
    except TimeoutError:
        raise ServiceError("deadline_exceeded", f"not answered within {ad.deadline_s:g} s") from None
    finally:
        queued()
        if job is not None and not finished:
            job.cancelled.set()  # whatever stopped us (client left, deadline, error): drop the remaining tiles
        req.release_body()
    return RestoreResult(data, media_type, int(job.timings.get("batch", 1)), timings)


class LocalPipeline:
    """The same pipeline for a synchronous caller (the CLI): its own event loop, service parts and workers.

    `restore(request)` blocks until that file is done; `close()` stops the decode workers.
    """

    def __init__(self, settings: Settings, backends: dict[str, Backend]) -> None:
        self._runner = asyncio.Runner()
        self.state: ServiceState = self._runner.run(self._open(settings, backends))

    @staticmethod
    async def _open(settings: Settings, backends: dict[str, Backend]) -> ServiceState:
        from prometheus_client import CollectorRegistry

        from service.metrics import Metrics

        state = ServiceState(settings, Metrics(CollectorRegistry()), backends)
        state.start()
        await state.warm_up()
        if not state.ready:
            await state.stop()
            raise RuntimeError("the local pipeline did not start (see the log line above)")
        return state

    def restore(self, request: RestoreRequest) -> RestoreResult:
        return self._runner.run(restore(self.state, request))

    def close(self) -> None:
        if self._runner.get_loop().is_closed():
            return
        self._runner.run(self.state.stop())
        self._runner.close()
