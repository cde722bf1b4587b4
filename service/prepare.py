"""`python -m service prepare --out DIR`: build, once, the exported graphs a start would otherwise build.

An image build runs it (`docker/Dockerfile.cpu`) and sets `DIFFIR_PREPARED_DIR=DIR`, so a container
never exports at start: with `DIFFIR_BACKEND=auto` every task's TorchScript and ONNX Runtime
candidates (those `auto` times on this kind of device, `service.runtime.loader.auto_candidates`);
with `torchscript`/`onnxruntime`, that one format. Exports are traces of the model, the same on every
machine; the `auto` *choice* is not (it is timed on the machine that serves, and cached in
`DIFFIR_CACHE_DIR`). Each export is checked against eager PyTorch (`models.graphs`), as at start.

The output is one line per export: the file written (or found already built).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def planned_exports(settings, device) -> list[tuple[str, Path, str | None, str]]:  # type: ignore[no-untyped-def]
    """(task, checkpoint, variant, format) for every export a start with these settings may build."""
    from service.runtime.loader import _FORMAT, _checkpoint_for, auto_candidates, default_task_settings

    planned = []
    specs = settings.tasks or default_task_settings()
    for name, spec in specs.items():
        if spec.artifact is not None:  # already an exported graph
            continue
        checkpoint = _checkpoint_for(name, spec)
        backend = spec.backend or settings.backend
        if backend == "auto":
            backends = [c.backend for c in auto_candidates(checkpoint, spec, settings, device) if c.backend in _FORMAT]
        else:
            backends = [backend] if backend in _FORMAT else []
        planned += [(name, checkpoint, spec.variant, _FORMAT[b]) for b in backends]
    return planned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder to write (default: DIFFIR_PREPARED_DIR)")
    args = parser.parse_args(argv)

    from service.errors import StartupError
    from service.runtime.devices import resolve_device
    from service.runtime.exports import cached_export
    from service.settings import load_settings
    from service.state import apply_thread_limit

    try:
        settings = load_settings({})
        out = args.out or settings.prepared_dir
        if out is None:
            raise StartupError("say where: --out DIR or DIFFIR_PREPARED_DIR")
        apply_thread_limit(settings)
        planned = planned_exports(settings, resolve_device(settings.device))
    except (StartupError, RuntimeError) as exc:
        print(f"diffir-serve prepare: {exc}", file=sys.stderr)
        return 2
    for _task, checkpoint, variant, fmt in planned:
        try:
            path = cached_export(checkpoint, variant, fmt, out)
        except Exception as exc:  # a model that does not export: say which, fail the build
            print(f"diffir-serve prepare: {checkpoint.name} to {fmt}: {exc}", file=sys.stderr)
            return 1
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
