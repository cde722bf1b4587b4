"""ONNX / TorchScript exports of a checkpoint: built at image build time, or on first use into the cache folder.

`DIFFIR_BACKEND=onnxruntime` (or the auto-tuner trying ONNX Runtime) must work on a fresh clone,
whose shipped checkpoints come without exports (they would triple the repository's weight
files). The first start writes the `prior` and `restorer` graphs (enough for whole images and
tiles) with `models.graphs`, checks them against eager PyTorch exactly as `python -m training
export` does, and later starts reuse them. The folder is keyed by the checkpoint's sha256 and the
torch version that traced it, and is published with one atomic rename, so concurrent starts
never see half an export. `python -m service prepare` (`service.prepare`) writes the same layout
into a read-only folder of the image (`DIFFIR_PREPARED_DIR`), so a container never exports at start.
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


def _checkpoint_sha(checkpoint: Path) -> str:
    """The sha256 the sidecar records (what `cached_export` keys on), else the file's own."""
    from models.checkpoint import read_sidecar, sha256_file

    try:
        recorded = read_sidecar(checkpoint).get("sha256")
    except (OSError, ValueError):  # an official checkpoint has no sidecar
        recorded = None
    return recorded or sha256_file(checkpoint)


def complete_export(root: Path, checkpoint: Path, sha: str, fmt: str) -> Path | None:
    """The `prior` artifact of a complete export of this checkpoint under `root`, or None."""
    folder = export_folder(root, sha, fmt)
    if all((folder / artifact_name(checkpoint.stem, g, fmt)).is_file() for g in SPLIT_GRAPHS):
        return folder / artifact_name(checkpoint.stem, SPLIT_GRAPHS[0], fmt)
    return None


def prepared_export(checkpoint: Path, fmt: str, prepared: Path | None) -> Path | None:
    """The export `python -m service prepare` built into `prepared` (read-only, e.g. in the image), or None.

    Same layout as the cache; one traced by another torch version is not used (its folder name differs)."""
    if prepared is None or not prepared.is_dir():
        return None
    return complete_export(prepared, checkpoint, _checkpoint_sha(checkpoint), fmt)


def cached_export(checkpoint: Path, variant: str | None, fmt: str, cache: Path, timeout_s: float | None = None) -> Path:
    """Path of the checkpoint's `prior` artifact in `fmt` (its `restorer` sibling next to it), built if missing.

    With `timeout_s`, a missing export is built in a child process that is killed after that
    many seconds (a RuntimeError): tracing a graph cannot be interrupted in-process, and an
    auto-tuning start must not hang on a candidate that would take many minutes to prepare.
    """
    from models.checkpoint import read_checkpoint, sha256_file
    from service.startup import step

    _, meta = read_checkpoint(checkpoint)
    sha = (meta or {}).get("sha256") or sha256_file(checkpoint)
    done = complete_export(cache, checkpoint, sha, fmt)
    if done is not None:
        return done
    folder = export_folder(cache, sha, fmt)
    target = folder / artifact_name(checkpoint.stem, SPLIT_GRAPHS[0], fmt)

    with step("export", f"exporting {checkpoint.name} to {fmt}", file=checkpoint.name, format=fmt):
        if timeout_s is not None:
            return _export_in_child(checkpoint, variant, fmt, cache, timeout_s, target)
        return _export_here(checkpoint, variant, fmt, folder, target, meta, sha)


def _export_here(checkpoint: Path, variant: str | None, fmt: str, folder: Path, target: Path, meta, sha: str) -> Path:
    """Trace, check and publish the export in this process (one atomic rename of a staging folder)."""
    from models.checkpoint import load_model

    name = checkpoint.stem
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
