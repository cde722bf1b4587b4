"""ONNX / TorchScript exports of a checkpoint, built on first use into the cache folder.

`DIFFIR_BACKEND=onnxruntime` (or the auto-tuner trying ONNX Runtime) must work on a fresh clone,
whose shipped checkpoints come without exports (they would triple the repository's weight
files). The first start writes the `prior` and `restorer` graphs (enough for whole images and
tiles) with `models.graphs`, checks them against eager PyTorch exactly as `python -m training
export` does, and later starts reuse them. The folder is keyed by the checkpoint's sha256 and the
torch version that traced it, and is published with one atomic rename, so concurrent starts
never see half an export.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from models.graphs import SPLIT_GRAPHS, artifact_name, write_checked_graph

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4


def export_folder(cache: Path, checkpoint_sha256: str, fmt: str) -> Path:
    return cache / "exports" / f"{checkpoint_sha256[:16]}-{fmt}-torch{torch.__version__.replace('+', '_')}"


def cached_export(checkpoint: Path, variant: str | None, fmt: str, cache: Path, timeout_s: float | None = None) -> Path:
    """Path of the checkpoint's `prior` artifact in `fmt` (its `restorer` sibling next to it), built if missing.

    With `timeout_s`, a missing export is built in a child process that is killed after that
    many seconds (a RuntimeError): tracing a graph cannot be interrupted in-process, and an
    auto-tuning start must not hang on a candidate that would take many minutes to prepare.
    """
    from models.checkpoint import load_model, read_checkpoint, sha256_file

    _, meta = read_checkpoint(checkpoint)
    sha = (meta or {}).get("sha256") or sha256_file(checkpoint)
    folder = export_folder(cache, sha, fmt)
    name = checkpoint.stem
    target = folder / artifact_name(name, SPLIT_GRAPHS[0], fmt)
    if all((folder / artifact_name(name, g, fmt)).is_file() for g in SPLIT_GRAPHS):
        return target
    if timeout_s is not None:
        return _export_in_child(checkpoint, variant, fmt, cache, timeout_s, target)
    net = load_model(checkpoint, variant=variant).eval()
    base = meta or {"variant": net.config.name, "config": net.config.to_dict(), "stage": "s2"}
    base = {**base, "sha256": sha}
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for graph in SPLIT_GRAPHS:
            path = staging / artifact_name(name, graph, fmt)
            parity, seconds = write_checked_graph(
                net, graph, fmt, path, base, PARITY_TOLERANCE, batches=(1, 2), threads=torch.get_num_threads(),
                built_from=str(checkpoint),
            )  # fmt: skip
            if not parity["ok"]:
                raise RuntimeError(
                    f"{path.name}: parity check against eager PyTorch failed "
                    f"(worst relative error {parity['worst_rel_max_err']:.2e})"
                )
            log.info("exported %s in %.1f s (parity %.1e)", path.name, seconds, parity["worst_rel_max_err"])
        try:
            os.replace(staging, folder)
        except OSError:  # another process published it first (a non-empty folder cannot be replaced)
            if not target.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _export_in_child(checkpoint: Path, variant: str | None, fmt: str, cache: Path, timeout_s: float, target: Path):
    command = [sys.executable, "-m", "service.runtime.exports", str(checkpoint), fmt, str(cache),
               "--threads", str(torch.get_num_threads())] + (["--variant", variant] if variant else [])  # fmt: skip
    try:
        subprocess.run(command, check=True, timeout=timeout_s, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"exporting {checkpoint.name} to {fmt} took over {timeout_s:g} s") from None
    except subprocess.CalledProcessError as exc:
        lines = (exc.stderr or "").strip().splitlines()
        raise RuntimeError(f"exporting {checkpoint.name} to {fmt} failed: {lines[-1] if lines else exc}") from None
    if not target.is_file():
        raise RuntimeError(f"exporting {checkpoint.name} to {fmt} wrote no {target.name}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="build a checkpoint's cached exports (used as a child process)")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("format", choices=["onnx", "torchscript"])
    parser.add_argument("cache", type=Path)
    parser.add_argument("--variant")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cached_export(args.checkpoint, args.variant, args.format, args.cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
