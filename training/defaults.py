"""Reproduce the three shipped default models (`make train-defaults`) and ship them.

`python -m training.defaults train [--tasks ...] [--parallel]` runs, per task, stage 1 then stage 2
with the recipes in `training/configs/<task>-s{1,2}.toml` into `runs/defaults/<task>/`, then, where
`<task>-s2-continue.toml` exists, a continuation of that stage-2 network (new loss or patches, same
stage-1 teacher) into `runs/defaults/<task>/continue/`. Every stage
resumes automatically when its state file exists, so re-running the command continues an
interrupted run (and does nothing for a finished one). `--parallel` runs the tasks side by side
with one thread each, which shares a small CPU more evenly than one task at a time.

`python -m training.defaults ship [--tasks ...]` copies each task's final stage-2 checkpoint into
`models/weights/<task>.safetensors` (+ sidecar), where the service looks by default.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from models.tasks import TASKS

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_TASKS = ("deblur", "sr-x4", "inpaint")


CONTINUE_DIR = "continue"


def continue_config(task: str) -> Path | None:
    path = CONFIG_DIR / f"{task}-s2-continue.toml"
    return path if path.is_file() else None


def final_stage_dir(task: str, run: Path) -> Path:
    """Where the checkpoint to ship lives: the continuation's stage 2 when the task has one."""
    return run / CONTINUE_DIR / "s2" if continue_config(task) else run / "s2"


def stage_command(task: str, stage: int, out_root: Path, extra: list[str]) -> list[str]:
    out = out_root / task
    cmd = [sys.executable, "-m", "training", f"stage{stage}", "--config", str(CONFIG_DIR / f"{task}-s{stage}.toml")]
    cmd += ["--out", str(out)]
    if (out / f"s{stage}" / "state.pt").is_file():
        cmd += ["--resume"]
    return cmd + extra


def continue_command(task: str, config: Path, out_root: Path, extra: list[str]) -> list[str]:
    run = out_root / task
    out = run / CONTINUE_DIR
    cmd = [sys.executable, "-m", "training", "stage2", "--config", str(config), "--out", str(out)]
    cmd += ["--init", str(run / "s1" / "model_latest.safetensors")]
    cmd += ["--init-student", str(run / "s2" / "model_latest.safetensors")]
    if (out / "s2" / "state.pt").is_file():
        cmd += ["--resume"]
    return cmd + extra


def _commands(task: str, out_root: Path, extra: list[str], minutes: tuple[float, float]):
    """A generator, so each command is built after the previous stage ran (--resume depends on it)."""
    for stage in (1, 2):
        limit = ["--max-minutes", str(minutes[stage - 1])] if minutes[stage - 1] > 0 else []
        yield stage_command(task, stage, out_root, extra + limit)
    config = continue_config(task)
    if config is not None:
        yield continue_command(task, config, out_root, extra)


def run_task(task: str, out_root: Path, extra: list[str], minutes: tuple[float, float]) -> int:
    for cmd in _commands(task, out_root, extra, minutes):
        print("+", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd)
        if rc != 0:
            return rc
    return 0


def ship(task: str, out_root: Path, weights_dir: Path) -> Path:
    src = final_stage_dir(task, out_root / task) / "model_latest.safetensors"
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no stage-2 checkpoint yet")
    name = TASKS[task].default_checkpoint
    dst = weights_dir / name
    weights_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    shutil.copyfile(src.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.defaults", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("train", "ship"))
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), choices=list(DEFAULT_TASKS))
    parser.add_argument("--out-root", default="runs/defaults")
    parser.add_argument("--parallel", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (default: 1 if parallel)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--minutes", type=float, nargs=2, default=(0.0, 0.0), metavar=("S1", "S2"))
    parser.add_argument("--weights-dir", default=str(Path(__file__).resolve().parents[1] / "models" / "weights"))
    args, extra = parser.parse_known_args(argv)
    out_root = Path(args.out_root)
    if args.command == "ship":
        for task in args.tasks:
            print(f"{task}: {ship(task, out_root, Path(args.weights_dir))}")
        return 0
    threads = args.threads or (1 if args.parallel else 0)
    if args.parallel:
        cmd = [sys.executable, "-m", "training.defaults", "train", "--out-root", str(out_root), "--workers",
               str(args.workers), "--threads", str(threads), "--minutes", *map(str, args.minutes), *extra]  # fmt: skip
        procs = [subprocess.Popen([*cmd, "--tasks", t]) for t in args.tasks]
        return max(p.wait() for p in procs)
    extra = [*extra, "--workers", str(args.workers)] + (["--threads", str(threads)] if threads else [])
    return max(run_task(t, out_root, extra, tuple(args.minutes)) for t in args.tasks)


if __name__ == "__main__":
    raise SystemExit(main())
