"""`diffir-restore TASK INPUT... [-o DIR]` (also `python -m service restore`): restore files or folders.

Locally by default, with exactly the service's pieces (settings, model loading, decode, engine,
encode), so a file restored here is byte-identical to the server's answer for the same settings and
seed; or through a running server with `--server URL` (then only the HTTP client is needed: no torch).

Outputs never overwrite each other: a folder input is mirrored under the output folder (`in/a/x.png`
-> `out/a/x.png`); names that would still collide (`x.png` and `x.webp` both becoming `x.png`) get
their source extension (`x_webp.png`), then a number. Outputs that already exist stop the run before
anything is computed unless `--overwrite` or `--skip-existing` says what to do. A file that fails is
reported and the run goes on; the exit status is 1 when any file failed, with a summary at the end.
For `inpaint`, the mask of `photo.png` is `photo.mask.png` (any allowed extension) unless `--mask`
names one file for all. `--seed`, `--format`, `--quality` and `--timeout` obey the server's rules
(`service.params`): what the server answers 422 `bad_parameter` stops the run before any work, with
the same message.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from service.errors import ServiceError
from service.extras import needs_serve_extra
from service.params import NAMES, OUTPUT_FORMATS, RestoreParams, parse_params

log = logging.getLogger("diffir.restore")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}

Restorer = Callable[[Path, "Path | None", str], bytes]
"""(image path, mask path or None, output format) -> encoded output bytes; raises on failure."""


class FileError(Exception):
    """One input could not be restored; `code` is the service's error code where there is one."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="diffir-restore",
        description="Restore image files and folders with a DiffIR model, locally or through a running server.",
    )
    p.add_argument("task", help="a configured task (deblur, sr-x4, inpaint, or one from DIFFIR_TASKS)")
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (folders are mirrored)")
    p.add_argument("-o", "--out", type=Path, default=Path("restored"), help="output folder (default ./restored)")
    p.add_argument("--suffix", default="", help="appended to each output's name: --suffix _x4 gives photo_x4.png")
    exists = p.add_mutually_exclusive_group()
    exists.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    exists.add_argument("--skip-existing", action="store_true", help="leave inputs whose output exists alone")
    p.add_argument("--mask", type=Path, help="inpaint: one mask for every input")
    # Text, checked by the server's own rules (service.params) in main(): same refusals, same code.
    p.add_argument("--seed", default="0", help="noise seed (default 0): same input and seed give the same bytes")
    p.add_argument(
        "--format", metavar="{" + ",".join(OUTPUT_FORMATS) + "}", help="output format (default: png; jpeg for .jpg)"
    )
    p.add_argument("--quality", help="JPEG/WebP quality 1-100")
    p.add_argument("--timeout", metavar="SECONDS", help="give up on a file after this long (504 deadline_exceeded)")
    local = p.add_argument_group("local restoration (no --server)")
    local.add_argument("--checkpoint", type=Path, help="use this checkpoint/artifact instead of the configured one")
    local.add_argument("--device", help="auto, cpu, cuda or cuda:N (default DIFFIR_DEVICE or auto)")
    local.add_argument(
        "--tile", type=int, help="restore inputs larger than TILE x TILE in TILE-pixel tiles (0: never tile)"
    )
    remote = p.add_argument_group("through a running server")
    remote.add_argument("--server", metavar="URL", help="e.g. http://127.0.0.1:8000 (needs no torch locally)")
    remote.add_argument("--api-key", default=os.environ.get("DIFFIR_API_KEY"), help="default: DIFFIR_API_KEY")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, only errors and the summary")
    args = p.parse_args(argv)
    if args.server and (args.checkpoint or args.device or args.tile is not None):
        p.error("--checkpoint, --device and --tile apply to local restoration, not with --server")
    return args


def request_params(args: argparse.Namespace) -> RestoreParams:
    """The command line's request parameters by the server's rules; `ServiceError("bad_parameter")` otherwise."""
    given = {name: [getattr(args, name)] for name in NAMES if getattr(args, name) is not None}
    return parse_params(given)


# --- what goes where ------------------------------------------------------------------------------
def output_format(requested: str | None, source: Path) -> str:
    """The CLI's rule: the requested format, else JPEG for `.jpg`/`.jpeg` files and PNG for the rest."""
    if requested:
        return requested
    return "jpeg" if source.suffix.lower() in (".jpg", ".jpeg") else "png"


@dataclass(frozen=True)
class Item:
    source: Path
    target: Path
    fmt: str


def _images_in(folder: Path) -> list[Path]:
    found = (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(p for p in found if ".mask." not in p.name)  # sorted: repeatable runs


def plan(inputs: list[Path], out: Path, suffix: str, requested: str | None) -> list[Item]:
    """Every input with its output path: folders mirrored, no two outputs on the same path."""
    several = len(inputs) > 1
    wanted: list[tuple[Path, Path, str]] = []  # (source, output folder, format)
    for item in inputs:
        if item.is_dir():
            base = out / item.resolve().name if several else out
            wanted += [(p, base / p.parent.relative_to(item), output_format(requested, p)) for p in _images_in(item)]
        else:
            wanted.append((item, out, output_format(requested, item)))
    plain = [folder / f"{src.stem}{suffix}{EXTENSIONS[fmt]}" for src, folder, fmt in wanted]
    counts: dict[Path, int] = {}
    for path in plain:
        counts[path] = counts.get(path, 0) + 1
    items, taken = [], set()
    for (src, folder, fmt), target in zip(wanted, plain):
        if counts[target] > 1 and src.suffix.lower() != EXTENSIONS[fmt]:
            target = folder / f"{src.stem}_{src.suffix.lower().lstrip('.')}{suffix}{EXTENSIONS[fmt]}"
        n = 2
        unique = target
        while unique in taken:
            unique = target.with_name(f"{target.stem}_{n}{target.suffix}")
            n += 1
        if unique != folder / f"{src.stem}{suffix}{EXTENSIONS[fmt]}":
            log.info("%s -> %s (another input has the same name)", src, unique)
        taken.add(unique)
        items.append(Item(src, unique, fmt))
    return items


def mask_for(path: Path, explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    for suffix in IMAGE_SUFFIXES:
        candidate = path.with_name(f"{path.stem}.mask{suffix}")
        if candidate.is_file():
            return candidate
    raise FileError("missing_mask", f"no mask for {path} (expected {path.stem}.mask.png or --mask)")


# --- the model call: one function per way of restoring ---------------------------------------------
def local_restorer(args: argparse.Namespace) -> Restorer:
    """Load the task's model in this process (the service's own pieces) and return its restore function."""
    import atexit

    from service.errors import StartupError
    from service.pipeline import LocalPipeline, RestoreRequest
    from service.runtime.devices import resolve_device
    from service.runtime.loader import default_task_settings, load_backend
    from service.settings import SERVER_ONLY, TaskSettings, load_settings

    overrides: dict[str, object] = {"device": args.device}
    if args.tile is not None:
        no_tiles = args.tile == 0
        overrides.update(
            tile_threshold_pixels=2**62 if no_tiles else args.tile * args.tile,
            **({} if no_tiles else {"tile_size": args.tile, "tile_overlap": min(32, (args.tile - 1) // 4)}),
        )
    flags = {"device": "--device", "tile_size": "--tile", "tile_overlap": "--tile", "tile_threshold_pixels": "--tile"}
    settings = load_settings(overrides, flags=flags, ignore=SERVER_ONLY)  # no port, no HTTP: their variables unread
    specs = settings.tasks or default_task_settings()
    if args.checkpoint is not None:
        key = "artifact" if args.checkpoint.suffix in (".onnx", ".ts") else "checkpoint"
        specs = {**specs, args.task: TaskSettings(**{key: args.checkpoint})}
    if args.task not in specs:
        raise StartupError(f"unknown task {args.task!r}; configured: {', '.join(specs)}")
    backend = load_backend(args.task, specs[args.task], settings, resolve_device(settings.device))
    # the server's own pipeline (decode workers, device queue, tiling, encode); a local run has no deadline to speak of
    local = settings.model_copy(update={"deadline_s": 86400.0, "tiled_deadline_s": 86400.0, "warmup_size": 0})
    pipeline = LocalPipeline(local, {args.task: backend})
    atexit.register(pipeline.close)

    params: RestoreParams = args.params

    def restore(path: Path, mask: Path | None, fmt: str) -> bytes:
        try:
            mask_data = mask_for(path, mask).read_bytes() if backend.info.needs_mask else None
            request = RestoreRequest(
                args.task, path.read_bytes(), mask_data, params.seed, fmt, params.quality, timeout_s=params.timeout_s
            )
            return pipeline.restore(request).data
        except ServiceError as exc:
            raise FileError(exc.code, str(exc)) from None

    return restore


def remote_restorer(args: argparse.Namespace) -> Restorer:
    """Send each file to a running server (`service.client`: httpx only)."""
    import httpx

    from service.client import Client, ClientError

    client = Client(args.server, api_key=args.api_key)
    params: RestoreParams = args.params
    try:
        tasks = {t["name"]: t for t in client.tasks()}
    except httpx.TransportError as exc:
        raise FileError("unreachable", f"cannot reach the server at {args.server}: {exc}") from None
    if args.task not in tasks:
        raise FileError("unknown_task", f"the server at {args.server} has no task {args.task!r}")
    needs_mask = bool(tasks[args.task].get("needs_mask"))

    def restore(path: Path, mask: Path | None, fmt: str) -> bytes:
        mask_path = mask_for(path, mask) if needs_mask else None
        try:
            result = client.restore(
                args.task,
                path,
                mask=mask_path,
                seed=params.seed,
                format=fmt,
                quality=params.quality,
                timeout_s=params.timeout_s,
            )
        except ClientError as exc:
            raise FileError(exc.code, exc.message) from None
        except httpx.TransportError as exc:
            raise FileError("unreachable", f"cannot reach the server at {args.server}: {exc}") from None
        return result.data

    return restore


def make_restorer(args: argparse.Namespace) -> Restorer:
    if args.server:
        return remote_restorer(args)
    problem = needs_serve_extra("restoring without --server")  # the client install has no models
    if problem:
        raise RuntimeError(f"{problem}, or pass --server URL")
    return local_restorer(args)


# --- the run ---------------------------------------------------------------------------------------
def _configure_output(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def run(args: argparse.Namespace, items: list[Item], restore: Restorer) -> int:
    """Restore every item, going on past failures; 0 when all succeeded, 1 otherwise."""
    failed: list[tuple[Path, str]] = []
    done = skipped = 0
    started = time.perf_counter()
    # A live bar only on a terminal (tqdm's disable=None); elsewhere one plain line per file, no carriage returns.
    bar = tqdm(total=len(items), unit="img", disable=None if not args.quiet else True, file=sys.stderr)
    plain = bar.disable and not args.quiet
    for i, item in enumerate(items, 1):
        if args.skip_existing and item.target.exists():
            skipped += 1
            outcome = "skipped (exists)"
        else:
            try:
                data = restore(item.source, args.mask, item.fmt)
                item.target.parent.mkdir(parents=True, exist_ok=True)
                item.target.write_bytes(data)
                done += 1
                outcome = f"-> {item.target}"
            except Exception as exc:  # this file failed (bad image, model error, server gone): report, go on
                why = f"{getattr(exc, 'code', type(exc).__name__)}: {exc}"
                failed.append((item.source, why))
                if bar.disable:
                    log.warning("%d/%d %s failed: %s", i, len(items), item.source, why)
                else:
                    bar.write(f"{item.source} failed: {why}", file=sys.stderr)
                outcome = ""
        bar.update(1)
        if plain and outcome:
            log.info("%d/%d %s %s", i, len(items), item.source, outcome)
    bar.close()
    seconds = time.perf_counter() - started
    summary = f"{done} restored, {skipped} skipped, {len(failed)} failed of {len(items)} in {seconds:.1f} s"
    if failed:
        log.error("%s:\n%s", summary, "\n".join(f"  {path}: {why}" for path, why in failed))
        return 1
    log.log(logging.WARNING if args.quiet else logging.INFO, summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    _configure_output(args.quiet)
    try:
        args.params = request_params(args)
    except ServiceError as exc:
        log.error("diffir-restore: %s: %s", exc.code, exc)
        return 2
    missing = [str(p) for p in args.inputs if not p.exists()]
    if missing:
        log.error("diffir-restore: no such file or folder: %s", ", ".join(missing))
        return 2
    items = plan(args.inputs, args.out, args.suffix, args.params.format)
    if not items:
        log.error("diffir-restore: no images (%s) in %s", " ".join(IMAGE_SUFFIXES), " ".join(map(str, args.inputs)))
        return 2
    existing = [i.target for i in items if i.target.exists()]
    if existing and not (args.overwrite or args.skip_existing):
        shown = ", ".join(map(str, existing[:3])) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        what = f"{shown} already exists" if len(existing) == 1 else f"{len(existing)} outputs already exist: {shown}"
        log.error("diffir-restore: %s; pass --overwrite or --skip-existing", what)
        return 2
    try:
        restore = make_restorer(args)
    except Exception as exc:  # start-up faults: one line, like the server's
        log.error("diffir-restore: %s", exc)
        return 1
    return run(args, items, restore)


if __name__ == "__main__":
    sys.exit(main())
