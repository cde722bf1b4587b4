"""Turn one task's settings into a loaded backend, or one clear `StartupError` line.

Resolution order: an `artifact` (backend from its suffix) > a `checkpoint` (torch eager) > the
task's shipped default checkpoint from `models.tasks.TASKS`. With `DIFFIR_BACKEND=onnxruntime`
or `torchscript` and no artifact configured, the exported `<task>.full.<onnx|ts>` next to the
checkpoint is used. A built-in task name must be served by a model of the task's kind and scale.
"""

from __future__ import annotations

from pathlib import Path

import torch

from service.errors import StartupError
from service.runtime.base import Backend
from service.settings import Settings, TaskSettings

_SUFFIX = {"onnxruntime": ".onnx", "torchscript": ".ts"}


def default_task_settings() -> dict[str, TaskSettings]:
    """No DIFFIR_TASKS: every task of `models.tasks.TASKS` with its shipped checkpoint."""
    from models.tasks import TASKS

    return {name: TaskSettings() for name in TASKS}


def _checkpoint_for(name: str, spec: TaskSettings) -> Path:
    if spec.checkpoint is not None:
        return spec.checkpoint
    from models.tasks import TASKS

    task = TASKS.get(name)
    path = task.default_checkpoint_path() if task else None
    if path is None:
        raise StartupError(f"task {name!r}: no `checkpoint` or `artifact` configured and no shipped default")
    return path


def _build(name: str, spec: TaskSettings, settings: Settings, device: torch.device) -> Backend:
    backend = (
        spec.backend
        or ("onnxruntime" if spec.artifact and spec.artifact.suffix == ".onnx" else None)
        or ("torchscript" if spec.artifact else settings.backend)
    )
    artifact = spec.artifact
    if artifact is None and backend != "torch":
        checkpoint = _checkpoint_for(name, spec)
        artifact = checkpoint.with_name(f"{checkpoint.stem}.full{_SUFFIX[backend]}")
    if artifact is not None:
        from service.runtime.artifacts import find_graphs

        graphs = find_graphs(artifact)
        if backend == "onnxruntime":
            from service.runtime.onnx_backend import OnnxBackend

            return OnnxBackend(graphs, device, settings.torch_threads)
        from service.runtime.torchscript_backend import TorchScriptBackend

        return TorchScriptBackend(graphs, device)
    from service.runtime.torch_backend import TorchBackend

    checkpoint = _checkpoint_for(name, spec)
    if spec.checkpoint is None and not checkpoint.is_file():
        raise StartupError(
            f"task {name!r}: the shipped checkpoint {checkpoint} is missing (train it, or point DIFFIR_TASKS "
            f'at one: {{"{name}": {{"checkpoint": "path.safetensors"}}}})'
        )
    return TorchBackend(checkpoint, spec.variant, device, settings.precision)


def _check_kind(name: str, backend: Backend) -> None:
    from models.tasks import TASKS

    task = TASKS.get(name)
    if task is None:
        return
    want, got = task.config, backend.info
    if (want.kind, want.scale) != (got.kind, got.scale):
        raise StartupError(
            f"task {name!r} needs a {want.kind} x{want.scale} model, but {got.source} is "
            f"{got.variant!r} ({got.kind} x{got.scale})"
        )


def load_backend(name: str, spec: TaskSettings, settings: Settings, device: torch.device) -> Backend:
    """Load and check one task's model; any problem becomes a one-line `StartupError`."""
    try:
        backend = _build(name, spec, settings, device)
    except StartupError:
        raise
    except Exception as exc:  # checkpoint/artifact/runtime errors of every library end here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StartupError(f"task {name!r}: {first}") from exc
    _check_kind(name, backend)
    return backend
