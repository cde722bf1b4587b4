"""`POST /restore/{task}`: the HTTP face of `service.pipeline` (auth, body, disconnects, accounting).

Order: API key (401) -> task (404) -> query values and timeout header, by the rules of
`service.params` that the CLI applies too (422) -> body under its caps, timeouts and the shared
upload budget -> `pipeline.restore`, raced against the client's disconnect. Every outcome, including
FastAPI's own validation errors, is counted once in `diffir_requests_total{task,code}` and answered
with `X-Request-ID`; bad input and overload get the precise codes of `service.errors`. Every refusal
(each 4xx, 503 `busy`/`queue_full`/`draining`, 504) is also counted once in `diffir_rejected_total`:
here, unless the batcher that refused it counted it (`ServiceError.counted`). A client that leaves
(mid-upload, queued, or while its tiles run) is a 499 counted as `reason="disconnected"`, and its work
is dropped; only a model failure is a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute

from service.errors import ServiceError, error_response
from service.http.auth import check_api_key
from service.http.bodies import BodyLimits, ClientGone, Upload, read_body, split_body
from service.http.dependencies import State, get_state
from service.logs import log_event
from service.metrics import UNKNOWN_TASK
from service.params import NAMES, TIMEOUT_HEADER, RestoreParams, openapi_parameters, parse_params
from service.pipeline import RestoreRequest, RestoreResult, task_runtime
from service.pipeline import restore as run_pipeline
from service.state import ServiceState

REFUSALS = {"busy": "busy", "draining": "draining", "queue_full": "queue_full", "deadline_exceeded": "deadline"}
"""The 5xx answers that are refusals, with their `diffir_rejected_total` reason (a 4xx's reason is its code)."""

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


class _Accounting:
    """Counts one request's outcome once: requests_total, rejected_total, duration, log fields."""

    def __init__(self, request: Request, state: ServiceState, task: str) -> None:
        self.request, self.state = request, state
        self.label = task if task in state.tasks else UNKNOWN_TASK
        self.started = time.perf_counter()

    def done(self, response: Response, timings: dict[str, float] | None = None, reason: str | None = None) -> Response:
        m = self.state.metrics
        if reason is not None and self.label != UNKNOWN_TASK:
            m.rejected.labels(self.label, reason).inc()
        m.requests.labels(self.label, str(response.status_code)).inc()
        if self.label != UNKNOWN_TASK:
            m.request_duration.labels(self.label).observe(time.perf_counter() - self.started)
        fields = {k: round(v * 1000, 2) for k, v in (timings or {}).items()}
        self.request.state.log_fields = {"task": self.label, **fields}
        return response


def _rejection(err: ServiceError) -> str | None:
    """The `diffir_rejected_total` reason of a refusal not counted yet (None for failures and counted ones)."""
    if err.counted:
        return None
    if err.code == "client_closed_request":
        return "disconnected"
    if err.status < 500:
        return err.code
    return REFUSALS.get(err.code)


class CountedRoute(APIRoute):
    """FastAPI validates query values before the handler runs; count and order those answers too.

    A request that fails validation still gets 401 without the key and 404 for an unknown task
    (those checks come first), then 422 `bad_parameter`, and it is counted like any other.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def counted(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                state = get_state(request)
                task = request.path_params.get("task", "")
                books = _Accounting(request, state, task)
                parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}" for e in exc.errors()]
                err = ServiceError("bad_parameter", "; ".join(parts) or "invalid parameters")
                try:
                    _check_access(request, state, task)
                except ServiceError as first:
                    err = first
                response = error_response(err, getattr(request.state, "request_id", None))
                return books.done(response, reason=_rejection(err))

        return counted


router = APIRouter(route_class=CountedRoute)


def _check_access(request: Request, state: ServiceState, task: str) -> None:
    """401 before anything else, then 503 while the models load, then 404 for an unknown task."""
    s = state.settings
    check_api_key(request, s.api_key.get_secret_value() if s.api_key else None)
    if not state.loaded:  # the port opens before the models are loaded
        doing = state.startup.snapshot().get("message") or state.startup.phase
        raise ServiceError("not_ready", f"the service is starting ({doing})", {"Retry-After": str(s.retry_after_s)})
    if task not in state.tasks:
        raise ServiceError("unknown_task", f"unknown task {task!r}; configured: {', '.join(state.tasks)}")


def _params(request: Request) -> RestoreParams:
    """The query parameters and the timeout header, by `service.params` (the CLI's rules too): 422 `bad_parameter`."""
    given = {name: request.query_params.getlist(name) for name in NAMES if name in request.query_params}
    return parse_params(given, request.headers.get(TIMEOUT_HEADER))


async def _until_disconnect(request: Request, work: Coroutine[Any, Any, RestoreResult]) -> RestoreResult:
    """Run `work`, cancelling it the moment the client goes away (ClientGone)."""
    task = asyncio.ensure_future(work)

    async def client_left() -> None:
        while True:  # after the body, the server only ever delivers http.disconnect
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(client_left())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone("the client went away before its answer")
    return task.result()


@router.post(
    "/restore/{task}",
    openapi_extra={"requestBody": REQUEST_BODY, "parameters": openapi_parameters()},
    responses=RESPONSES,
    response_class=Response,
)
async def restore(request: Request, state: State, task: str) -> Response:
    request_id: str = request.state.request_id
    books = _Accounting(request, state, task)
    s = state.settings
    upload = Upload(state.uploads)
    try:
        _check_access(request, state, task)
        params = _params(request)
        rt = task_runtime(state, task)
        limits = BodyLimits(s.max_body_bytes, s.body_timeout_s, s.body_idle_timeout_s, s.retry_after_s)
        body = await read_body(request, limits, upload)
        image, mask = await split_body(request.headers, body, rt.engine.info.needs_mask)
        del body
        req = RestoreRequest(
            task, image, mask, params.seed, params.format, params.quality, request_id, upload.release, params.timeout_s
        )
        del image, mask
        result = await _until_disconnect(request, run_pipeline(state, req))
    except ServiceError as err:
        return books.done(error_response(err, request_id), reason=_rejection(err))
    except ClientGone as gone:
        if books.label != UNKNOWN_TASK:
            state.metrics.disconnected.labels(books.label).inc()
        err = ServiceError("client_closed_request", str(gone))
        return books.done(error_response(err, request_id), reason="disconnected")
    except asyncio.CancelledError:
        # uvicorn cancels what is still running when the drain time is over: answer 503 `draining`
        # (the client may retry elsewhere) rather than letting the server turn it into a bare 500.
        if not state.draining:
            raise
        retry = {"Retry-After": str(s.retry_after_s)}
        err = ServiceError("draining", "shut down before this request finished", retry)
        return books.done(error_response(err, request_id), reason="draining")
    except Exception:
        log_event("restore failed", logging.ERROR, exc_info=True, request_id=request_id, task=task)
        err = ServiceError("internal_error", "restoring this request failed")
        return books.done(error_response(err, request_id))
    finally:
        upload.release()
    timing = ", ".join(f"{k};dur={v * 1000:.2f}" for k, v in result.timings.items())
    headers = {"Server-Timing": timing, "X-Batch-Size": str(result.batch_size)}
    return books.done(Response(result.data, media_type=result.media_type, headers=headers), result.timings)
