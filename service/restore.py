"""`POST /restore/{task}`: body -> decode (thread) -> batcher -> encode (thread) -> image bytes.

Every outcome, good or bad, is counted in `diffir_requests_total{task,code}` and answered with
`X-Request-ID`; bad input and overload become the precise error codes of `service.errors`,
never a 500. Only a failure inside the model batch is a 500 (`internal_error`, with the id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Literal

import numpy as np
import torch
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from service.auth import check_api_key
from service.batcher import DeadlineExceeded, Disconnected, Draining, QueueFull
from service.bodies import read_body, split_body
from service.engine import Job
from service.errors import ServiceError
from service.imaging import DecodedImage, choose_format, decode_image, decode_mask, encode_image
from service.imaging.formats import MAX_SIDE
from service.logs import log_event
from service.metrics import UNKNOWN_TASK
from service.state import ServiceState, TaskRuntime

router = APIRouter()
MAX_SEED = 2**63 - 1

REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary", "description": "PNG, JPEG, WebP, TIFF or BMP"},
                    "mask": {"type": "string", "format": "binary", "description": "inpaint only: white = hole"},
                },
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}
ERROR_SCHEMA = {
    "type": "object",
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "request_id": {"type": "string"}},
}
RESPONSES = {
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}, "description": "the restored image"},
    **{
        code: {"content": {"application/json": {"schema": ERROR_SCHEMA}}, "description": text}
        for code, text in (
            (400, "malformed multipart"),
            (401, "API key required"),
            (404, "unknown task"),
            (413, "too large"),
            (415, "unsupported media type or format"),
            (422, "invalid input"),
            (500, "model failure"),
            (503, "overloaded or draining"),
            (504, "deadline exceeded"),
        )
    },
}


def error_response(err: ServiceError, request_id: str | None) -> JSONResponse:
    return JSONResponse(err.body(request_id), status_code=err.status, headers=err.headers)


def _decode(body_image: bytes, body_mask: bytes | None, rt: TaskRuntime, state: ServiceState) -> tuple:
    s, info = state.settings, rt.engine.info
    image = decode_image(
        body_image, max_pixels=s.max_input_pixels, scale=info.scale, max_output_pixels=s.max_output_pixels
    )
    tensor = torch.from_numpy(image.take_pixels()).permute(2, 0, 1)[None]  # NCHW view, channels-last strides
    mask = None
    if info.needs_mask:
        if body_mask is None:
            raise ServiceError("missing_mask", "this task needs a `mask` file part (white = hole)")
        holes = decode_mask(body_mask, image.size, threshold=s.mask_threshold, max_pixels=s.max_input_pixels)
        mask = torch.from_numpy(holes)[None, None]
    return image, tensor, mask


def _encode(out: torch.Tensor, image: DecodedImage, fmt: str, quality: int | None, level: int) -> tuple[bytes, str]:
    rgb = out[0].permute(1, 2, 0).numpy().astype(np.float32, copy=False)
    return encode_image(rgb, image, fmt, quality=quality, png_level=level)


def _overload(exc: Exception, retry_after: int) -> ServiceError:
    headers = {"Retry-After": str(retry_after)}
    if isinstance(exc, QueueFull):
        return ServiceError("queue_full", str(exc), headers)
    if isinstance(exc, Draining):
        return ServiceError("draining", str(exc), headers)
    if isinstance(exc, DeadlineExceeded):
        return ServiceError("deadline_exceeded", str(exc))
    return ServiceError("client_closed_request", str(exc))


@router.post(
    "/restore/{task}", openapi_extra={"requestBody": REQUEST_BODY}, responses=RESPONSES, response_class=Response
)
async def restore(
    request: Request,
    task: str,
    seed: Annotated[int, Query(ge=0, le=MAX_SEED, description="noise seed; same input + seed -> same bytes")] = 0,
    format: Annotated[Literal["png", "jpeg", "webp"] | None, Query(description="output format")] = None,
    quality: Annotated[int | None, Query(ge=1, le=100, description="JPEG/WebP quality")] = None,
) -> Response:
    state: ServiceState = request.app.state.service
    request_id: str = request.state.request_id
    started = time.perf_counter()
    rt = state.tasks.get(task)
    label = task if rt is not None else UNKNOWN_TASK
    timings: dict[str, float] = {}
    try:
        response = await _restore(request, rt, task, state, seed, format, quality, timings)
    except ServiceError as err:
        response = error_response(err, request_id)
        if err.status != 500 and rt is not None and err.code not in ("queue_full", "draining", "deadline_exceeded"):
            state.metrics.rejected.labels(label, err.code).inc()
    except asyncio.CancelledError:
        # uvicorn cancels what is still running when the drain time is over: answer 503 `draining`
        # (the client may retry elsewhere) rather than letting the server turn it into a bare 500.
        if not state.draining:
            raise
        retry = {"Retry-After": str(state.settings.retry_after_s)}
        response = error_response(ServiceError("draining", "shut down before this request finished", retry), request_id)
        if rt is not None:
            state.metrics.rejected.labels(label, "draining").inc()
    except Exception:
        log_event("restore failed", logging.ERROR, exc_info=True, request_id=request_id, task=task)
        failure = ServiceError("internal_error", "restoring this request failed (its batch failed in the model)")
        response = error_response(failure, request_id)
    elapsed = time.perf_counter() - started
    state.metrics.requests.labels(label, str(response.status_code)).inc()
    if rt is not None:
        state.metrics.request_duration.labels(label).observe(elapsed)
    request.state.log_fields = {"task": label, **{k: round(v * 1000, 2) for k, v in timings.items()}}
    return response


async def _restore(
    request: Request,
    rt: TaskRuntime | None,
    task: str,
    state: ServiceState,
    seed: int,
    fmt: str | None,
    quality: int | None,
    timings: dict[str, float],
) -> Response:
    s = state.settings
    check_api_key(request, s.api_key.get_secret_value() if s.api_key else None)
    if rt is None:
        raise ServiceError("unknown_task", f"unknown task {task!r}; configured: {', '.join(state.tasks)}")
    if state.draining:
        raise ServiceError("draining", "the server is shutting down", {"Retry-After": str(s.retry_after_s)})
    arrived = time.perf_counter()
    body = await read_body(request, s.max_body_bytes)
    image_bytes, mask_bytes = await split_body(request.headers, body, rt.engine.info.needs_mask)
    t0 = time.perf_counter()
    async with state.decode_slots:
        image, tensor, mask = await run_in_threadpool(_decode, image_bytes, mask_bytes, rt, state)
    del body, image_bytes, mask_bytes
    timings["decode"] = time.perf_counter() - t0
    h, w = image.size
    out_fmt = choose_format(fmt, image)
    side = max(h, w) * rt.engine.info.scale
    if side > MAX_SIDE[out_fmt]:
        raise ServiceError(
            "bad_parameter", f"{out_fmt} holds at most {MAX_SIDE[out_fmt]} px per side; the output has {side}"
        )
    state.metrics.input_pixels.labels(rt.name).observe(h * w)
    job = Job(tensor, mask, seed)
    deadline = s.tiled_deadline_s if rt.engine.tiled(job) else s.deadline_s
    remaining = deadline - (time.perf_counter() - arrived)

    async def alive() -> bool:
        return not await request.is_disconnected()

    try:
        out, waited = await rt.lane(job).submit(job, deadline_s=remaining, alive=alive)
    except (QueueFull, Draining, DeadlineExceeded, Disconnected) as exc:
        job.cancelled.set()  # a tiled restoration already running stops at its next tile
        raise _overload(exc, s.retry_after_s) from None
    except asyncio.CancelledError:
        job.cancelled.set()
        raise
    timings["queue"] = waited
    timings["inference"] = job.timings.get("inference", 0.0)
    t1 = time.perf_counter()
    data, media_type = await run_in_threadpool(_encode, out, image, out_fmt, quality, s.png_compress_level)
    timings["encode"] = time.perf_counter() - t1
    server_timing = ", ".join(f"{k};dur={v * 1000:.2f}" for k, v in timings.items())
    headers = {"Server-Timing": server_timing, "X-Batch-Size": str(int(job.timings.get("batch", 1)))}
    return Response(data, media_type=media_type, headers=headers)
