"""Turn one task's settings into a loaded backend, or one clear `StartupError` line.

Resolution order: an `artifact` (backend from its suffix) > a `checkpoint` > the task's shipped
default checkpoint from `models.tasks.TASKS`. A checkpoint runs on the configured backend:

* `torch`: eager, at `DIFFIR_PRECISION` (fp32 unless set).
* `onnxruntime` / `torchscript`: the exported `<stem>.full.<onnx|ts>` next to the checkpoint when
  present, else the exports `python -m service prepare` built into `DIFFIR_PREPARED_DIR` (an image
  build step), else exports built on first use in the cache folder (`service.runtime.exports`); the
  prior of a tiled input still comes from the checkpoint's eager model, window by window.
* `auto` (the default): every candidate this machine supports (eager fp32, eager bf16/fp16 where the
  device has fast units, TorchScript, ONNX Runtime) is timed and the fastest one that
  stays within 45 dB of fp32 is kept (`service.runtime.autotune`), the choice cached per machine
  and model. An explicit `DIFFIR_PRECISION` limits the candidates to that precision.

A built-in task name must be served by a model of the task's kind and scale.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path

import torch

from models.graphs import FORMAT_SUFFIX
from models.inpainting import network_input
from service.errors import StartupError
from service.logs import log_event
from service.runtime.base import Backend
from service.settings import Settings, TaskSettings

log = logging.getLogger("diffir")
_FORMAT = {"onnxruntime": "onnx", "torchscript": "torchscript"}
AUTO_EXPORT_TIMEOUT_S = 120.0
"""`auto` gives up on a candidate whose first-use export takes longer (a huge traced graph on a
busy CPU); an explicit `DIFFIR_BACKEND=onnxruntime` waits for as long as the export takes."""


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
    if not path.is_file():
        raise StartupError(
            f"task {name!r}: the shipped checkpoint {path} is missing (wheels carry no weights: install from a "
            f"clone with `pip install -e`, or point DIFFIR_TASKS at one: "
            f'{{"{name}": {{"checkpoint": "path.safetensors"}}}})'
        )
    return path


def check_sources(specs: dict[str, TaskSettings]) -> None:
    """Every task's model file exists (a `StartupError` naming the first one that does not); nothing is read."""
    for name, spec in specs.items():
        if spec.artifact is not None:
            if not spec.artifact.is_file():
                raise StartupError(f"task {name!r}: artifact not found: {spec.artifact}")
            continue
        checkpoint = _checkpoint_for(name, spec)
        if not checkpoint.is_file():
            raise StartupError(f"task {name!r}: checkpoint not found: {checkpoint}")


def _from_artifact(artifact: Path, backend: str, settings: Settings, device: torch.device) -> Backend:
    from service.runtime.artifacts import find_graphs

    graphs = find_graphs(artifact)
    if backend == "onnxruntime":
        from service.runtime.onnx_backend import OnnxBackend

        return OnnxBackend(graphs, device, settings.torch_threads)
    from service.runtime.torchscript_backend import TorchScriptBackend

    return TorchScriptBackend(graphs, device)


def _exported(
    checkpoint: Path,
    spec: TaskSettings,
    backend: str,
    settings: Settings,
    device: torch.device,
    timeout_s: float | None = None,
) -> Backend:
    """An exported backend for a checkpoint: its shipped/exported sibling, or a cached export."""
    fmt = _FORMAT[backend]
    beside = checkpoint.with_name(f"{checkpoint.stem}.full{FORMAT_SUFFIX[fmt]}")
    if not beside.is_file():
        from service.runtime.cache import cache_root
        from service.runtime.exports import cached_export, prepared_export

        # built at image build time (`python -m service prepare`), else built once into the writable cache
        found = prepared_export(checkpoint, fmt, settings.prepared_dir)
        if found is None:
            found = cached_export(checkpoint, spec.variant, fmt, cache_root(settings.cache_dir), timeout_s)
        beside = found
    exported = _from_artifact(beside, backend, settings, device)
    # A tiled input's prior: exact and in window-sized units from the eager model (the exported prior
    # graph is one call on the whole image, which would hold the device for several tiles' time).
    try:
        exported.windowed = _torch(checkpoint, spec, device, "fp32")
    except Exception as exc:  # an exported sibling of a checkpoint that does not load by itself
        log.warning("windowed prior unavailable", extra={"checkpoint": str(checkpoint), "error": str(exc)})
    return exported


def _torch(checkpoint: Path, spec: TaskSettings, device: torch.device, precision: str) -> Backend:
    from service.runtime.torch_backend import TorchBackend

    return TorchBackend(checkpoint, spec.variant, device, precision)


def low_precisions(device: torch.device) -> tuple[str, ...]:
    """Low precisions worth timing: the ones this device has fast units for."""
    if device.type == "cuda":
        return ("bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp16",)
    from service.runtime.devices import cpu_fingerprint

    isa = set(cpu_fingerprint()["isa"])  # type: ignore[arg-type]
    fast = [] if not isa & {"avx512_bf16", "amx_bf16", "bf16"} else ["bf16"]
    if isa & {"avx512_fp16", "amx_fp16"}:
        fast.append("fp16")
    return tuple(fast)


def _export_too_slow_for_startup(checkpoint: Path) -> bool:
    """The smooth hole pre-fill unrolls hundreds of conjugate-gradient iterations into the traced graph:
    its ONNX export takes minutes on a CPU (past AUTO_EXPORT_TIMEOUT_S on 2 cores), so `auto` would
    hold every first start for the whole budget only to drop the candidate. It is left out of `auto`;
    `DIFFIR_BACKEND=onnxruntime` still exports it."""
    from models.checkpoint import read_sidecar

    try:
        config = read_sidecar(checkpoint).get("config", {})
    except (OSError, ValueError):  # no sidecar (an official checkpoint): no pre-fill either
        return False
    return config.get("hole_fill") == "smooth"


def auto_candidates(checkpoint: Path, spec: TaskSettings, settings: Settings, device: torch.device):
    """What `auto` times, fp32 eager (the reference) first."""
    from service.runtime.autotune import Candidate

    want = settings.precision
    found = [Candidate("torch-fp32", "torch", "fp32", partial(_torch, checkpoint, spec, device, "fp32"))]
    low = low_precisions(device) if want is None else (() if want == "fp32" else (want,))
    for precision in low:
        build = partial(_torch, checkpoint, spec, device, precision)
        found.append(Candidate(f"torch-{precision}", "torch", precision, build))
    if want in (None, "fp32"):
        # TorchScript: a trace of seconds even for the smooth pre-fill, and it beats eager where the graph has
        # many small ops (the pre-fill's solver: 1.1-1.2x for `inpaint` on an AVX2 CPU, bench/results/speed-default.md)
        exporters = ["torchscript"] + ([] if _export_too_slow_for_startup(checkpoint) else ["onnxruntime"])
        for backend in exporters:
            build = partial(_exported, checkpoint, spec, backend, settings, device, AUTO_EXPORT_TIMEOUT_S)
            found.append(Candidate(f"{backend}-fp32", backend, "fp32", build))
    if want not in (None, "fp32"):  # the reference still runs (it judges the others) but cannot win
        found[0] = Candidate("torch-fp32", "torch", "fp32", found[0].build, eligible=False)
    return found


def tuning_input(config, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic, photo-like input (smooth shading, edges, texture) of output edge `side`.

    Inpainting: the RGB zeroed inside a centred square hole plus the mask channel, as the engine
    builds it.
    """
    m = config.size_multiple
    n = max(m, math.ceil(side / config.scale / m) * m)
    y, x = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    gen = torch.Generator().manual_seed(0)
    rgb = torch.stack([0.5 + 0.4 * torch.sin(6 * x + 3 * y), y, ((x * 8).floor() + (y * 8).floor()) % 2 * 0.6 + 0.2])
    rgb = (rgb + 0.03 * torch.randn(rgb.shape, generator=gen)).clamp(0, 1).unsqueeze(0)
    if config.kind == "inpaint":
        mask = torch.zeros(1, 1, n, n)
        mask[..., n // 4 : 3 * n // 4, n // 4 : 3 * n // 4] = 1
        rgb = network_input(rgb, mask)
    return rgb, torch.randn(1, config.ipr_dim, generator=gen)


def _auto(name: str, checkpoint: Path, spec: TaskSettings, settings: Settings, device: torch.device) -> Backend:
    from models.checkpoint import read_checkpoint, sha256_file
    from service.runtime.autotune import ChoiceCache, choose, tuning_key
    from service.runtime.cache import cache_root
    from service.runtime.devices import cpu_fingerprint, describe

    candidates = auto_candidates(checkpoint, spec, settings, device)
    if len(candidates) == 1:
        return _annotated_single(candidates[0])
    _, meta = read_checkpoint(checkpoint)
    sha = (meta or {}).get("sha256") or sha256_file(checkpoint)
    key = tuning_key(
        {
            "model": sha,
            "variant": spec.variant,
            "device": describe(device),
            "machine": cpu_fingerprint(),
            "onnxruntime": _version_of("onnxruntime") or _version_of("onnxruntime-gpu"),
            "onnx": _version_of("onnx"),  # the exporter needs it: without it ONNX Runtime cannot be a candidate
            "candidates": [c.label for c in candidates],
            "size": settings.autotune_size,
        }
    )
    cache = ChoiceCache(cache_root(settings.cache_dir), key)

    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        from models.checkpoint import load_model

        cfg = load_model(checkpoint, variant=spec.variant).config
        return tuning_input(cfg, settings.autotune_size)

    from service.startup import step

    labels = ", ".join(c.label for c in candidates)
    with step("tune", f"choosing the fastest of {len(candidates)} ways to run {name}", task=name, candidates=labels):
        backend = choose(candidates, sample, cache)
    tuning = getattr(backend, "tuning", None) or {}
    log_event("auto backend", task=name, chosen=tuning.get("chosen"), from_cache=bool(tuning.get("cached")))
    return backend


def _annotated_single(candidate) -> Backend:
    backend = candidate.build()
    backend.precision = candidate.precision
    return backend


def _version_of(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _build(name: str, spec: TaskSettings, settings: Settings, device: torch.device) -> Backend:
    backend = spec.backend or settings.backend
    if spec.artifact is not None:
        from service.settings import ARTIFACT_SUFFIXES

        return _from_artifact(spec.artifact, ARTIFACT_SUFFIXES[spec.artifact.suffix], settings, device)
    checkpoint = _checkpoint_for(name, spec)
    if backend == "torch":
        return _torch(checkpoint, spec, device, settings.precision or "fp32")
    if backend == "auto":
        return _auto(name, checkpoint, spec, settings, device)
    if settings.precision not in (None, "fp32"):
        raise StartupError(f"task {name!r}: DIFFIR_PRECISION={settings.precision} needs the torch or auto backend")
    return _exported(checkpoint, spec, backend, settings, device)


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
