"""Thin read-only endpoints: `/healthz`, `/readyz`, `/tasks`, `/metrics` (GET and HEAD).

`/healthz` is liveness: 200 while the models load and warm (a long start is no fault), 503 after a
failed start-up or a sticky accelerator fault (an illegal address or a device-side assert poisons
the CUDA context, so every later batch would fail): the orchestrator restarts the pod. `/readyz` is
200 only when every task is warmed, the device is healthy and no drain runs; its 503 body says what
the service is doing instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from models.tasks import TASKS
from service.http.dependencies import State
from service.imaging.formats import ALLOWED_FORMATS, OUTPUT_FORMATS
from service.state import ServiceState, TaskRuntime

router = APIRouter()


def read_route(target: Any, path: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """GET (documented) plus HEAD (same handler, kept out of the schema: one operation id per path)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        target.add_api_route(path, fn, methods=["GET"], **kwargs)
        target.add_api_route(path, fn, methods=["HEAD"], include_in_schema=False, **kwargs)
        return fn

    return register


@read_route(router, "/healthz", summary="the process is alive, also while starting (503 after a fault)")
async def healthz(state: State) -> JSONResponse:
    if state.device_error is not None:
        return JSONResponse({"status": "device_failed", "error": state.device_error}, status_code=503)
    if state.startup_failed:
        return JSONResponse({"status": "failed", "error": state.startup.error}, status_code=503)
    return JSONResponse({"status": "ok"})


@read_route(router, "/readyz", summary="200 only when every task is warmed and the device healthy (503 otherwise)")
async def readyz(state: State) -> JSONResponse:
    """503 bodies say why: `loading` (with the start-up step running, e.g. "loading task 2 of 3 (sr-x4) >
    choosing the fastest of 4 ways to run sr-x4 > timing onnxruntime-fp32 (3 of 4)"), `warming`, `failed`,
    `draining`, `device_failed`."""
    body = state.readiness()
    if body["status"] == "ready":
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(state.settings.retry_after_s)})


def task_description(rt: TaskRuntime) -> str:
    """The shipped task's description (`models.tasks`), or a line from the model for custom task names."""
    spec = TASKS.get(rt.name)
    if spec is not None:
        return spec.description
    info = rt.engine.info
    return f"{info.kind} ({info.variant}" + (f", x{info.scale})" if info.scale > 1 else ")")


def describe_task(rt: TaskRuntime, state: ServiceState) -> dict:
    info, backend, s = rt.engine.info, rt.engine.backend, state.settings
    scale2 = info.scale * info.scale
    return {
        "name": rt.name,
        "description": task_description(rt),
        "variant": info.variant,
        "kind": info.kind,
        "scale": info.scale,
        "needs_mask": info.needs_mask,
        "backend": backend.name,
        "provider": backend.provider,
        "precision": getattr(backend, "precision", "fp32"),
        "autotune": getattr(backend, "tuning", None),
        "version": info.version,
        "sha256": info.sha256,
        "model_file": Path(info.source).name,
        "tiling": backend.supports_tiling,
        "limits": {
            "max_body_bytes": s.max_body_bytes,
            "max_input_pixels": min(s.max_input_pixels, s.max_output_pixels // scale2),
            "max_output_pixels": s.max_output_pixels,
            "tile_threshold_pixels": s.tile_threshold_pixels,
            "max_batch_size": rt.batcher.max_batch_size,
            "queue_size": s.queue_size,
            "deadline_s": s.deadline_s,
        },
        "formats": {"input": list(ALLOWED_FORMATS), "output": list(OUTPUT_FORMATS)},
    }


@read_route(router, "/tasks", summary="each task's model, backend, real execution provider and limits")
async def tasks(state: State) -> dict:
    return {"tasks": [describe_task(rt, state) for rt in state.tasks.values()], "ready": state.ready}


async def metrics(state: State) -> Response:
    """Prometheus text format from the app's own registry."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
