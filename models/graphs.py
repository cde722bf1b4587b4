"""The exported-graph contract, in one place: which graphs exist, their input and output names,
how artifact files and their JSON sidecars are named and what a sidecar holds, and how a graph is
written as ONNX or TorchScript.

* `full`      (lq, noise) -> image           the whole restoration in one call
* `prior`     (lq, noise) -> ipr (B x 256)   CPEN_S2 + 4 denoiser steps
* `restorer`  (lq, ipr)   -> image           DIRformer only

Splitting prior and restorer lets a large image be restored in tiles with one global IPR
computed on the whole (or a downscaled) image. Inputs must already be padded to
`config.size_multiple`; `models.sizing` does that outside the graph. The noise is an explicit
input, so an exported graph is deterministic and comparable with eager PyTorch.

`training.export` (the command line exporter) and the service (which reads artifacts, and builds
the exports of a checkpoint on first use) both go through this module; neither spells a graph,
tensor or file name itself.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from models.diffir import DiffIRS2
from models.inpainting import network_input


class FullGraph(nn.Module):
    def __init__(self, net: DiffIRS2) -> None:
        super().__init__()
        self.net = net

    def forward(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net(lq, noise=noise)


class PriorGraph(nn.Module):
    def __init__(self, net: DiffIRS2) -> None:
        super().__init__()
        self.net = net

    def forward(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net.prior(lq, noise)


class RestorerGraph(nn.Module):
    def __init__(self, net: DiffIRS2) -> None:
        super().__init__()
        self.net = net

    def forward(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        return self.net.restore(lq, ipr)


class GraphSpec(NamedTuple):
    """One graph: its wrapper module, its two input names and its output name."""

    wrapper: type[nn.Module]
    inputs: tuple[str, str]
    output: str

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Batch, height and width are dynamic; the output image has its own (scaled) size names."""
        axes: dict[str, dict[int, str]] = {}
        for name in self.inputs:
            axes[name] = {0: "batch", 2: "height", 3: "width"} if name == LQ else {0: "batch"}
        axes[self.output] = {0: "batch", 2: "out_height", 3: "out_width"} if self.output == IMAGE else {0: "batch"}
        return axes


LQ, NOISE, IPR, IMAGE = "lq", "noise", "ipr", "image"
GRAPHS: dict[str, GraphSpec] = {
    "full": GraphSpec(FullGraph, (LQ, NOISE), IMAGE),
    "prior": GraphSpec(PriorGraph, (LQ, NOISE), IPR),
    "restorer": GraphSpec(RestorerGraph, (LQ, IPR), IMAGE),
}
SPLIT_GRAPHS = ("prior", "restorer")
"""Enough for everything (full = restorer(prior)), and what tiled restoration needs."""

FORMAT_SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}
SUFFIX_FORMAT = {".onnx": "onnx", ".ts": "torchscript", ".pt": "torchscript"}
ONNX_OPSET = 17  # LayerNormalization needs >= 17
SIDECAR_REQUIRED = ("config", "sha256")
"""A sidecar holds the checkpoint sidecar's fields (variant, config, provenance, ...) plus
`checkpoint_sha256`, `sha256` (of the artifact file), `artifact` (its file name), `format`,
`graph`, `inputs`, `outputs`, `size_multiple`, `scale`, `opset`, `torch_version` and `parity`."""


# --- file naming ---------------------------------------------------------------------------------
def artifact_name(name: str, graph: str, fmt: str) -> str:
    """("deblur", "full", "onnx") -> "deblur.full.onnx"."""
    return f"{name}.{graph}{FORMAT_SUFFIX[fmt]}"


def parse_artifact_name(path: Path) -> tuple[str, str]:
    """`deblur.full.onnx` -> ("deblur", "full"); ValueError for any other shape of name."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    name, _, graph = stem.rpartition(".")
    if not name or graph not in GRAPHS:
        raise ValueError(f"{path}: artifact names look like <name>.<{'|'.join(GRAPHS)}>{path.suffix}")
    return name, graph


def sibling_artifact(path: Path, graph: str) -> Path:
    """The artifact of another graph of the same export (same folder, name and format)."""
    name, _ = parse_artifact_name(path)
    return path.with_name(f"{name}.{graph}{path.suffix}")


def sidecar_path(artifact: Path) -> Path:
    """Where an artifact's sidecar is written: `<file>.json` (ONNX and TorchScript can share a folder)."""
    return artifact.with_name(artifact.name + ".json")


def find_sidecar(artifact: Path) -> Path:
    """`<file>.json` when present, else the older shared `<name>.<graph>.json`."""
    own = sidecar_path(artifact)
    return own if own.is_file() else artifact.with_suffix(".json")


def sidecar_fields(
    checkpoint_meta: dict[str, Any], net: DiffIRS2, artifact: Path, graph: str, fmt: str, **extra: Any
) -> dict[str, Any]:
    """The sidecar of a freshly written artifact (the schema in `SIDECAR_REQUIRED`'s docstring)."""
    from models.checkpoint import sha256_file

    cfg = net.config
    spec = GRAPHS[graph]
    return {
        **checkpoint_meta,
        "checkpoint_sha256": checkpoint_meta.get("sha256"),
        "sha256": sha256_file(artifact),
        "artifact": artifact.name,
        "format": fmt,
        "graph": graph,
        "inputs": list(spec.inputs),
        "outputs": [spec.output],
        "size_multiple": cfg.size_multiple,
        "scale": cfg.scale,
        "opset": ONNX_OPSET if fmt == "onnx" else None,
        "torch_version": torch.__version__,
        **extra,
    }


# --- writing and checking ------------------------------------------------------------------------
def example_inputs(net: DiffIRS2, graph: str, batch: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Realistic inputs of `graph`: a random image (inpainting: RGB zeroed in a binary hole plus the
    mask), random noise, and for the restorer the IPR the prior computes from them."""
    gen = torch.Generator().manual_seed(seed)
    cfg = net.config
    lq = torch.rand((batch, cfg.image_channels, h, w), generator=gen)
    if cfg.kind == "inpaint":
        mask = (torch.rand((batch, 1, h, w), generator=gen) > 0.7).float()
        lq = network_input(lq[:, :3], mask)
    vec = torch.randn((batch, cfg.ipr_dim), generator=gen)
    if graph == "restorer":
        with torch.no_grad():
            vec = net.prior(lq, vec)
    return lq, vec


def write_graph(net: DiffIRS2, graph: str, fmt: str, path: Path) -> float:
    """Write `graph` of `net` to `path` as ONNX or frozen TorchScript; returns the seconds it took.

    Traced at batch 2 (a batch-1 example can specialise the batch axis) and the smallest
    rectangular size, with dynamic batch, height and width.
    """
    spec = GRAPHS[graph]
    module = spec.wrapper(net).eval()
    m = net.config.size_multiple
    example = example_inputs(net, graph, 2, m, 2 * m, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            torch.onnx.export(
                module,
                example,
                str(path),
                input_names=list(spec.inputs),
                output_names=[spec.output],
                dynamic_axes=spec.dynamic_axes(),
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        elif fmt == "torchscript":
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.freeze(traced.eval()).save(str(path))
        else:
            raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMAT_SUFFIX)}")
    return time.perf_counter() - started


def parity_checks(
    net: DiffIRS2,
    graph: str,
    run: Callable[..., torch.Tensor],
    sizes: Sequence[tuple[int, int]] = (),
    batches: Sequence[int] = (1, 3),
) -> list[dict[str, Any]]:
    """Compare `run(*inputs)` (an exported graph) with eager PyTorch on fresh inputs.

    Default sizes: 2x3 and 3x2 size-multiples (rectangular, and not the traced example's size).
    """
    m = net.config.size_multiple
    module = GRAPHS[graph].wrapper(net).eval()
    checks = []
    for h, w in sizes or ((2 * m, 3 * m), (3 * m, 2 * m)):
        for batch in batches:
            args = example_inputs(net, graph, batch, h, w, seed=h * 1000 + w + batch)
            with torch.no_grad():
                ref = module(*args)
                got = run(*args)
            err = (got - ref).abs().max() if got.shape == ref.shape else torch.tensor(float("inf"))
            checks.append(
                {
                    "batch": batch,
                    "height": h,
                    "width": w,
                    "shape_ok": got.shape == ref.shape,
                    "rel_max_err": (err / ref.abs().max().clamp_min(1e-12)).item(),
                    "abs_max_err": err.item(),
                }
            )
    return checks


def parity_summary(checks: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The sidecar's `parity` entry: ok when every shape matches and the worst relative error is within tolerance."""
    worst = max(c["rel_max_err"] for c in checks)
    ok = worst <= tolerance and all(c["shape_ok"] for c in checks)
    return {"ok": ok, "worst_rel_max_err": worst, "tolerance": tolerance, "checks": checks}


def artifact_runner(
    fmt: str, path: Path, inputs: Sequence[str], threads: int | None = None
) -> Callable[..., torch.Tensor]:
    """Run a written artifact on CPU tensors, as the parity check sees it (ONNX Runtime's CPU
    provider with `threads` intra-op threads, or the frozen TorchScript module)."""
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(*args: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {n: a.numpy() for n, a in zip(inputs, args)})[0])

        return run
    return torch.jit.load(str(path))


def write_checked_graph(
    net: DiffIRS2,
    graph: str,
    fmt: str,
    path: Path,
    checkpoint_meta: dict[str, Any],
    tolerance: float,
    sizes: Sequence[tuple[int, int]] = (),
    batches: Sequence[int] = (1, 3),
    threads: int | None = None,
    **sidecar_extra: Any,
) -> tuple[dict[str, Any], float]:
    """Write `graph` to `path`, check it against eager PyTorch and write its sidecar (parity included).

    Returns the parity summary and the seconds the writing took; the caller decides what a failed
    check means (`python -m training export` reports it, the service's first-use export refuses it).
    """
    seconds = write_graph(net, graph, fmt, path)
    runner = artifact_runner(fmt, path, GRAPHS[graph].inputs, threads)
    parity = parity_summary(parity_checks(net, graph, runner, sizes, batches), tolerance)
    fields = sidecar_fields(checkpoint_meta, net, path, graph, fmt, parity=parity, **sidecar_extra)
    sidecar_path(path).write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    return parity, seconds
