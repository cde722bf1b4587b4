"""Export a stage-2 checkpoint to ONNX and TorchScript, parity-checked against eager PyTorch.

Three graphs per checkpoint (see `models.graphs`): `full` (lq, noise -> image), `prior`
(lq, noise -> ipr) and `restorer` (lq, ipr -> image), each with dynamic batch, height and width
and the noise as an explicit input. Every artifact gets a JSON sidecar (the checkpoint's
sidecar plus graph, I/O names, size multiple, sha256 of the artifact and the parity numbers),
and the whole check is also written to `<name>.parity.json`.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models import DiffIRS2, load_model
from models.checkpoint import read_checkpoint, sha256_file
from models.graphs import GRAPHS

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}


@dataclass
class ExportOptions:
    graphs: tuple[str, ...] = ("full", "prior", "restorer")
    formats: tuple[str, ...] = FORMATS
    opset: int = 17
    check_sizes: tuple[tuple[int, int], ...] = ()
    """Two (H, W) LQ sizes to check at; default: 2 and 3 size-multiples (rectangular)."""
    check_batches: tuple[int, ...] = (1, 3)
    tolerance: float = 1e-4
    extra_meta: dict[str, Any] = field(default_factory=dict)


def artifact_sidecar(path: Path) -> Path:
    """`deblur.full.onnx` -> `deblur.full.onnx.json`: ONNX and TorchScript can share a folder."""
    return path.with_name(path.name + ".json")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _example_inputs(net: DiffIRS2, graph: str, batch: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    cfg = net.config
    lq = torch.rand((batch, cfg.image_channels, h, w), generator=gen)
    if cfg.kind == "inpaint":  # a real binary mask channel, RGB zeroed inside the hole
        mask = (torch.rand((batch, 1, h, w), generator=gen) > 0.7).float()
        lq = torch.cat([lq[:, :3] * (1 - mask), mask], dim=1)
    vec = torch.randn((batch, cfg.ipr_dim), generator=gen)
    if graph == "restorer":
        with torch.no_grad():
            vec = net.prior(lq, vec)  # a realistic IPR rather than raw noise
    return lq, vec


def _dynamic_axes(inputs: Sequence[str], output: str) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for name in (*inputs, output):
        axes[name] = {0: "batch", 2: "height", 3: "width"} if name in ("lq", "image") else {0: "batch"}
    return axes


def _export_onnx(module: torch.nn.Module, example: tuple, path: Path, inputs, output, opset: int) -> None:
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=list(inputs),
            output_names=[output],
            dynamic_axes=_dynamic_axes(inputs, output),
            opset_version=opset,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)))


def _export_torchscript(module: torch.nn.Module, example: tuple, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
    traced = torch.jit.freeze(traced.eval())
    traced.save(str(path))


def _runner(fmt: str, path: Path, inputs: Sequence[str]):
    if fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

        def run(*args: torch.Tensor) -> torch.Tensor:
            feeds = {name: a.numpy() for name, a in zip(inputs, args)}
            return torch.from_numpy(session.run(None, feeds)[0])

        return run
    loaded = torch.jit.load(str(path))

    def run_ts(*args: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(*args)

    return run_ts


def export(checkpoint: str | Path, out_dir: str | Path, name: str | None = None, options: ExportOptions | None = None):
    """Export, check and describe every requested graph/format; returns the parity report."""
    opts = options or ExportOptions()
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = load_model(checkpoint, variant=opts.extra_meta.get("variant"))
    _, ckpt_meta = read_checkpoint(checkpoint)
    cfg = net.config
    name = name or checkpoint.stem
    m = cfg.size_multiple
    sizes = opts.check_sizes or ((2 * m, 3 * m), (3 * m, 2 * m))
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "variant": cfg.name, "tolerance": opts.tolerance}
    report["artifacts"] = {}
    for graph in opts.graphs:
        wrapper_cls, inputs, output = GRAPHS[graph]
        module = wrapper_cls(net).eval()
        example = _example_inputs(net, graph, 2, m, 2 * m, seed=0)  # batch 2: keeps the batch axis dynamic
        for fmt in opts.formats:
            path = out_dir / f"{name}.{graph}{SUFFIX[fmt]}"
            t0 = time.perf_counter()
            with torch.no_grad():
                (
                    _export_onnx(module, example, path, inputs, output, opts.opset)
                    if fmt == "onnx"
                    else _export_torchscript(module, example, path)
                )
            export_s = time.perf_counter() - t0
            run = _runner(fmt, path, inputs)
            checks = []
            for h, w in sizes:
                for batch in opts.check_batches:
                    args = _example_inputs(net, graph, batch, h, w, seed=h * 1000 + w + batch)
                    with torch.no_grad():
                        ref = module(*args)
                    got = run(*args)
                    checks.append(
                        {
                            "batch": batch,
                            "height": h,
                            "width": w,
                            "shape_ok": got.shape == ref.shape,
                            "rel_max_err": _rel(got, ref),
                            "abs_max_err": (got - ref).abs().max().item(),
                        }
                    )
            worst = max(c["rel_max_err"] for c in checks)
            ok = worst <= opts.tolerance and all(c["shape_ok"] for c in checks)
            meta = {
                **(ckpt_meta or {"variant": cfg.name, "config": cfg.to_dict(), "stage": "s2"}),
                "checkpoint_sha256": (ckpt_meta or {}).get("sha256", sha256_file(checkpoint)),
                "sha256": sha256_file(path),
                "artifact": path.name,
                "format": fmt,
                "graph": graph,
                "inputs": list(inputs),
                "outputs": [output],
                "size_multiple": m,
                "scale": cfg.scale,
                "opset": opts.opset if fmt == "onnx" else None,
                "torch_version": torch.__version__,
                "parity": {"ok": ok, "worst_rel_max_err": worst, "tolerance": opts.tolerance, "checks": checks},
            }
            artifact_sidecar(path).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            report["artifacts"][path.name] = {
                "ok": ok,
                "worst_rel_max_err": worst,
                "export_seconds": export_s,
                "bytes": path.stat().st_size,
            }
            if not ok:
                raise RuntimeError(f"{path.name}: parity check failed (worst relative error {worst:.2e})")
    (out_dir / f"{name}.parity.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="stage-2 checkpoint (ours or official)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--name", help="artifact base name (default: checkpoint stem)")
    parser.add_argument("--variant", help="preset name, for official checkpoints whose shapes are ambiguous")
    parser.add_argument("--graphs", default="full,prior,restorer")
    parser.add_argument("--formats", default="onnx,torchscript")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    graphs = tuple(g for g in args.graphs.split(",") if g)
    formats = tuple(f for f in args.formats.split(",") if f)
    for g in graphs:
        if g not in GRAPHS:
            parser.error(f"unknown graph {g!r}; choose from {', '.join(GRAPHS)}")
    for f in formats:
        if f not in FORMATS:
            parser.error(f"unknown format {f!r}; choose from {', '.join(FORMATS)}")
    if args.opset < 17:
        parser.error("opset must be >= 17 (LayerNormalization)")
    opts = ExportOptions(
        graphs=graphs,
        formats=formats,
        opset=args.opset,
        tolerance=args.tolerance,
        extra_meta={"variant": args.variant} if args.variant else {},
    )
    report = export(args.checkpoint, args.out, args.name, opts)
    for artifact, r in report["artifacts"].items():
        print(
            f"{artifact:40s} ok={r['ok']} worst_rel={r['worst_rel_max_err']:.2e} "
            f"export={r['export_seconds']:.1f}s size={r['bytes'] / 1e6:.1f}MB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
