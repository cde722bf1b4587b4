"""Export a stage-2 checkpoint to ONNX and TorchScript, parity-checked against eager PyTorch.

Three graphs per checkpoint (the contract, names and sidecar schema live in `models.graphs`):
`full` (lq, noise -> image), `prior` (lq, noise -> ipr) and `restorer` (lq, ipr -> image), each
with dynamic batch, height and width and the noise as an explicit input. Every artifact gets a
JSON sidecar (the checkpoint's sidecar plus graph, I/O names, size multiple, sha256 of the
artifact and the parity numbers), and the whole check is also written to `<name>.parity.json`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models import load_model
from models.checkpoint import read_checkpoint, sha256_file
from models.graphs import FORMAT_SUFFIX, GRAPHS, artifact_name, write_checked_graph

FORMATS = tuple(FORMAT_SUFFIX)


@dataclass
class ExportOptions:
    graphs: tuple[str, ...] = tuple(GRAPHS)
    formats: tuple[str, ...] = FORMATS
    check_sizes: tuple[tuple[int, int], ...] = ()
    """(H, W) LQ sizes to check at; default: 2x3 and 3x2 size-multiples (rectangular)."""
    check_batches: tuple[int, ...] = (1, 3)
    tolerance: float = 1e-4
    extra_meta: dict[str, Any] = field(default_factory=dict)


def export(checkpoint: str | Path, out_dir: str | Path, name: str | None = None, options: ExportOptions | None = None):
    """Export, check and describe every requested graph/format; returns the parity report."""
    opts = options or ExportOptions()
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = load_model(checkpoint, variant=opts.extra_meta.get("variant"))
    _, ckpt_meta = read_checkpoint(checkpoint)
    cfg = net.config
    base_meta = ckpt_meta or {"variant": cfg.name, "config": cfg.to_dict(), "stage": "s2"}
    base_meta = {**base_meta, "sha256": base_meta.get("sha256") or sha256_file(checkpoint)}
    name = name or checkpoint.stem
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "variant": cfg.name, "tolerance": opts.tolerance}
    report["artifacts"] = {}
    for graph in opts.graphs:
        for fmt in opts.formats:
            path = out_dir / artifact_name(name, graph, fmt)
            parity, export_s = write_checked_graph(
                net, graph, fmt, path, base_meta, opts.tolerance, opts.check_sizes, opts.check_batches
            )
            report["artifacts"][path.name] = {
                "ok": parity["ok"],
                "worst_rel_max_err": parity["worst_rel_max_err"],
                "export_seconds": export_s,
                "bytes": path.stat().st_size,
            }
            if not parity["ok"]:
                raise RuntimeError(
                    f"{path.name}: parity check failed (worst relative error {parity['worst_rel_max_err']:.2e})"
                )
    (out_dir / f"{name}.parity.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="stage-2 checkpoint (ours or official)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--name", help="artifact base name (default: checkpoint stem)")
    parser.add_argument("--variant", help="preset name, for official checkpoints whose shapes are ambiguous")
    parser.add_argument("--graphs", default=",".join(GRAPHS))
    parser.add_argument("--formats", default=",".join(FORMATS))
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
    opts = ExportOptions(
        graphs=graphs,
        formats=formats,
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
