"""`python -m service restore TASK INPUT... [-o DIR]`: restore files or folders locally, no server.

Uses exactly the service's pieces (settings, model loading, decode, engine, encode), so a file
restored here is byte-identical to the server's answer for the same settings and seed. Folders
are walked for allow-listed image files (sorted, so runs are repeatable); for `inpaint`, the mask
of `photo.png` is `photo.mask.png` (any allowed extension) unless `--mask` names one file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from service.errors import ServiceError, StartupError
from service.imaging import choose_format, decode_image, decode_mask, encode_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m service restore", description="Restore images locally.")
    p.add_argument("task", help="a configured task (deblur, sr-x4, inpaint, or one from DIFFIR_TASKS)")
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders")
    p.add_argument("-o", "--out", type=Path, default=Path("restored"), help="output folder (default ./restored)")
    p.add_argument("--mask", type=Path, help="inpaint: one mask for every input")
    p.add_argument("--checkpoint", type=Path, help="use this checkpoint/artifact instead of the configured one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=sorted(EXTENSIONS), help="output format (default: png, jpeg for jpeg)")
    p.add_argument("--quality", type=int, help="JPEG/WebP quality 1-100")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def collect(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files.extend(
                sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and ".mask." not in p.name)
            )
        else:
            files.append(item)
    return files


def mask_for(path: Path, explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    for suffix in sorted(IMAGE_SUFFIXES):
        candidate = path.with_name(f"{path.stem}.mask{suffix}")
        if candidate.is_file():
            return candidate
    raise ServiceError("missing_mask", f"no mask for {path} (expected {path.stem}.mask.png or --mask)")


def progress(done: int, total: int, started: float, name: str, quiet: bool) -> None:
    if quiet:
        return
    width = 30
    filled = width * done // max(total, 1)
    rate = done / max(time.perf_counter() - started, 1e-9)
    bar = "#" * filled + "-" * (width - filled)
    sys.stderr.write(f"\r[{bar}] {done}/{total} {rate:.2f} img/s {name[:40]:<40}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def main(argv: list[str]) -> int:
    args = _parse(argv)
    from service.engine import Engine, EngineLimits, Job
    from service.runtime.devices import configure_inference_thread, resolve_device
    from service.runtime.loader import default_task_settings, load_backend
    from service.server import load_settings
    from service.settings import TaskSettings

    try:
        settings = load_settings({})
        specs = settings.tasks or default_task_settings()
        if args.checkpoint is not None:
            key = "artifact" if args.checkpoint.suffix in (".onnx", ".ts") else "checkpoint"
            specs = {**specs, args.task: TaskSettings(**{key: args.checkpoint})}
        if args.task not in specs:
            raise StartupError(f"unknown task {args.task!r}; configured: {', '.join(specs)}")
        backend = load_backend(args.task, specs[args.task], settings, resolve_device(settings.device))
    except (StartupError, RuntimeError, ValueError) as exc:
        print(f"diffir-serve restore: {exc}", file=sys.stderr)
        return 1
    s = settings
    engine = Engine(
        args.task,
        backend,
        EngineLimits(s.tile_size, s.tile_overlap, s.tile_threshold_pixels, s.bucket_multiple, s.prior_max_pixels),
    )
    configure_inference_thread()
    files = collect(args.inputs)
    args.out.mkdir(parents=True, exist_ok=True)
    failures, started = 0, time.perf_counter()
    for i, path in enumerate(files):
        try:
            image = decode_image(
                path.read_bytes(),
                max_pixels=s.max_input_pixels,
                scale=backend.info.scale,
                max_output_pixels=s.max_output_pixels,
            )
            mask = None
            if backend.info.needs_mask:
                holes = decode_mask(
                    mask_for(path, args.mask).read_bytes(),
                    image.size,
                    threshold=s.mask_threshold,
                    max_pixels=s.max_input_pixels,
                )
                mask = torch.from_numpy(holes)[None, None]
            job = Job(torch.from_numpy(image.take_pixels()).permute(2, 0, 1)[None], mask, args.seed)
            (out,) = engine.run_batch([job])
            fmt = choose_format(args.format, image)
            data, _ = encode_image(out[0].permute(1, 2, 0).numpy(), image, fmt, quality=args.quality)
            (args.out / f"{path.stem}{EXTENSIONS[fmt]}").write_bytes(data)
        except (ServiceError, OSError) as exc:
            failures += 1
            sys.stderr.write(f"\n{path}: {getattr(exc, 'code', 'error')}: {exc}\n")
        progress(i + 1, len(files), started, path.name, args.quiet)
    return 1 if failures else 0
