"""Continue the three shipped models on a lent GPU, as that machine runs it; then decide on the CPU whether they ship.

    python -m training.gpu_recipe subset --data-root DATA --dest gpu-data [--max-mib 10]
    python -m training.gpu_recipe train --out DIR --data-root gpu-data [--minutes 2.5] [--tasks ...] [--dry-run]
    python -m training.gpu_recipe evaluate RETURNED [--data-root DATA] [--limit N] [--ship]

`train` runs with the machine's own `python3` (no venv, no network; `bench/gpu_visit.sh` calls it). Each task
continues its shipped network (`models/weights/<task>.safetensors`: a later visit continues whatever was
shipped since) teacher-free (the stage-1 checkpoints are not shipped; see `TrainConfig.teacher`) with its
continuation recipe's degradation and losses, at GPU sizes (256 px patches, batch 32, bf16 autocast, a
constant learning rate with EMA) for its share of `--minutes` (`SHARES`). The run folders (with the
optimiser state) stay in a scratch folder; only weights come back, because only 8 files of at most 16 MiB
each return from a device: `DIR/<task>.safetensors` (the EMA network) per task plus one JSON log,
`DIR/gpu_recipe.json` (per task: steps, time, the loss log and the weights' sidecar), both rewritten after
each task. `--dry-run` runs the same plan on the CPU at toy sizes (2 steps, 32 px) in seconds.

`subset` copies what `train` reads from a data root (what `make data` fills) into a folder small enough to
travel with the working tree: the first training images by name up to `--max-mib` (`bench/gpu_visit.sh
--room` says how much is left; the blur kernels ship with the code).

`evaluate` runs afterwards on the CPU over what came back: it restores each sidecar from the log, scores
the returned and the shipped network of each task on the task's evaluation protocol (`training.evaluate`;
`--limit` images per task for a quick look), and ships (`--ship`: copies into `models/weights/`) only a
network that beats the shipped one by `MIN_GAIN_DB` on the mean PSNR and, for deblur, still meets the
no-harm bars. Its verdicts go to `RETURNED/decision.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.tasks import get_task
from training.config import TrainConfig, apply_overrides, load_config_file

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TASK_RECIPES = {"deblur": "deblur-s2-noharm.toml", "sr-x4": "sr-x4-s2.toml", "inpaint": "inpaint-s2.toml"}
SHARES = {"deblur": 0.45, "sr-x4": 0.3, "inpaint": 0.25}
"""Share of the budget per task: deblur is the furthest from its bar."""
GPU_SIZES = {"patches": [256], "batches": [32], "workers": 12, "precision": "bf16", "device": "cuda"}
DRY_SIZES = {"patches": [32], "batches": [1], "workers": 0, "precision": "fp32", "device": "cpu", "steps": 2}
LOG_FILE = "gpu_recipe.json"
MIN_GAIN_DB = 0.02
"""A returned network ships only when its mean PSNR beats the shipped one's by this much."""
log = logging.getLogger("training.gpu_recipe")


def plan(task: str, scratch: Path, minutes: float, dry_run: bool, data_root: Path | None = None) -> TrainConfig:
    """The continuation config of one task (its recipe file, then the GPU or dry-run sizes); runs in `scratch`."""
    values = load_config_file(CONFIG_DIR / TASK_RECIPES[task])
    if data_root is not None:
        values["data"] = [str(data_root / "train")]
    cfg = apply_overrides(TrainConfig(task=task, stage=2), values, TASK_RECIPES[task])
    common = {
        "teacher": False,
        "init_student": str(get_task(task).default_checkpoint_path()),
        "encoder_frac": 0.0,
        "schedule": "constant",
        "lr": 5e-5,
        "ema": 0.999,
        "ema_warmup": True,
        "phase_fracs": [],
        "steps": 100_000,
        "max_minutes": round(minutes * SHARES[task], 2),
        "save_every": 100_000,  # only the final save: intermediate ones cost GPU time and never come back
        "keep": 1,
        "val": "",
        "log_every": 20,
        "progress": False,
        "resume": False,
        "out": str(scratch / task),
    }
    sizes = DRY_SIZES | {"max_minutes": 0.0, "threads": 1} if dry_run else GPU_SIZES
    return apply_overrides(cfg, common | sizes, "gpu recipe")


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def train(args: argparse.Namespace) -> int:
    from training.run import run_stage

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_FILE
    record: dict[str, Any] = json.loads(log_path.read_text()) if log_path.is_file() else {}
    record.setdefault("tasks", {})
    record.update(minutes=args.minutes, dry_run=args.dry_run, data_root=str(args.data_root))
    failed = []
    with tempfile.TemporaryDirectory(prefix="diffir-gpu-train-", dir=args.scratch) as scratch:
        for task in args.tasks:
            cfg = plan(task, Path(scratch), args.minutes, args.dry_run, args.data_root)
            shown = {k: v for k, v in dataclasses.asdict(cfg).items() if k in KEYS_SHOWN}
            log.info("%s: %s", task, json.dumps(shown))
            started = time.perf_counter()
            try:
                weights = Path(run_stage(cfg))
            except Exception as exc:  # the other tasks still train; the log says what broke
                log.exception("%s failed", task)
                record["tasks"][task] = {"status": "fail", "error": f"{type(exc).__name__}: {str(exc)[:2000]}"}
                failed.append(task)
                write_json(log_path, record)
                continue
            shutil.copyfile(weights, out / f"{task}.safetensors")
            rows = [json.loads(line) for line in (cfg.stage_dir / "log.jsonl").read_text().splitlines() if line]
            sidecar = json.loads(weights.with_suffix(".json").read_text())
            record["tasks"][task] = {
                "status": "pass",
                "seconds": round(time.perf_counter() - started, 1),
                "steps": sidecar["provenance"]["step"],
                "settings": shown,
                "log": rows,
                "sidecar": sidecar,
            }
            write_json(log_path, record)
    record["failed"] = failed
    write_json(log_path, record)
    return 1 if failed else 0


KEYS_SHOWN = ("patches", "batches", "precision", "device", "max_minutes", "init_student", "lr", "steps")


# --- the data that travels --------------------------------------------------------------------------
def subset(data_root: Path, dest: Path, max_mib: float) -> dict[str, Any]:
    """The first training images by name that fit `max_mib`, copied into `dest/train` (the blur kernels the
    degradations need ship with the code)."""
    from training.imageio import list_images

    if not (data_root / "train").is_dir():
        raise FileNotFoundError(f"{data_root / 'train'}: no training images (is {data_root} the data root?)")
    budget = max_mib * 2**20
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "train").mkdir(parents=True)
    taken, used = 0, 0
    for path in sorted(list_images([data_root / "train"])):
        size = path.stat().st_size
        if used + size > budget:
            break
        shutil.copyfile(path, dest / "train" / path.name)
        taken, used = taken + 1, used + size
    if taken == 0:
        raise ValueError(f"no training image fits {max_mib} MiB")
    return {"images": taken, "mib": round(used / 2**20, 2), "dest": str(dest)}


# --- afterwards, on the CPU ---------------------------------------------------------------------------
def restore_sidecars(returned: Path) -> dict[str, Path]:
    """task -> weights, with each `<task>.json` sidecar written back from the log (weights-only outputs)."""
    record = json.loads((returned / LOG_FILE).read_text())
    found = {}
    for task, entry in record["tasks"].items():
        weights = returned / f"{task}.safetensors"
        if entry.get("status") != "pass" or not weights.is_file():
            continue
        weights.with_suffix(".json").write_text(json.dumps(entry["sidecar"], indent=2, sort_keys=True) + "\n")
        found[task] = weights
    return found


def score(task: str, weights: Path, data_root: Path, limit: int) -> dict[str, Any]:
    """Mean PSNR on the task's evaluation protocol (deblur: with the no-harm sets and their verdict)."""
    from models import load_model
    from training.evaluate import evaluate, noharm_verdict, protocol_cases

    spec = get_task(task)
    kind, scale = spec.config.kind, spec.scale
    protocol = "all" if kind == "deblur" else "ours"
    cases = protocol_cases(kind, scale, data_root, protocol)
    if limit:
        cases = itertools.islice(cases, limit)
    net = load_model(weights).eval()
    result = evaluate(net, cases, kind, scale, log=lambda _: None, skip_baselines=kind != "deblur")
    means = result["means"]
    out: dict[str, Any] = {"mean_psnr": means.get("all", next(iter(means.values())))["model"]["psnr"]}
    if kind == "deblur" and not limit:
        out["noharm"] = noharm_verdict(result)
    return out


def decide(returned: Path, data_root: Path, limit: int, ship: bool) -> dict[str, Any]:
    decisions: dict[str, Any] = {}
    for task, weights in restore_sidecars(returned).items():
        shipped = get_task(task).default_checkpoint_path()
        new, old = score(task, weights, data_root, limit), score(task, shipped, data_root, limit)
        gain = new["mean_psnr"] - old["mean_psnr"]
        ok = gain >= MIN_GAIN_DB and new.get("noharm", {}).get("bars_met", True)
        decisions[task] = {"returned": new, "shipped": old, "gain_db": round(gain, 3), "ships": bool(ok and not limit)}
        if limit:
            decisions[task]["note"] = f"first {limit} images only: a quick look, never shipped"
        if ship and decisions[task]["ships"]:
            shutil.copyfile(weights, shipped)
            shutil.copyfile(weights.with_suffix(".json"), shipped.with_suffix(".json"))
        log.info("%s: %+.3f dB -> %s", task, gain, "ships" if decisions[task]["ships"] else "stays")
    write_json(returned / "decision.json", decisions)
    return decisions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.gpu_recipe", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="continue the shipped models (on the GPU machine)")
    t.add_argument("--out", required=True, type=Path, help="weights + JSON log (on a device: $OUT)")
    t.add_argument("--minutes", type=float, default=2.5, help="training wall time for all tasks together")
    t.add_argument("--tasks", nargs="+", default=list(TASK_RECIPES), choices=list(TASK_RECIPES))
    t.add_argument("--dry-run", action="store_true", help="the same plan on the CPU at toy sizes")
    t.add_argument("--data-root", type=Path, required=True, help="a data root with train/ (e.g. the subset)")
    t.add_argument("--scratch", type=Path, help="where the run folders go (default: the system's temporary folder)")
    s = sub.add_parser("subset", help="copy a training subset small enough to travel")
    s.add_argument("--data-root", type=Path, required=True)
    s.add_argument("--dest", type=Path, required=True)
    s.add_argument("--max-mib", type=float, default=10.0)
    e = sub.add_parser("evaluate", help="score what came back against the shipped weights (CPU)")
    e.add_argument("returned", type=Path, help="the folder the GPU visit brought back")
    e.add_argument("--data-root", type=Path, default=None, help="the data root with val/ and tasks/ (`make data`)")
    e.add_argument("--limit", type=int, default=0, help="only the first N images per task (never ships)")
    e.add_argument("--ship", action="store_true", help="copy the networks that pass into models/weights/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "train":
        return train(args)
    if args.command == "subset":
        print(json.dumps(subset(args.data_root, args.dest, args.max_mib)))
        return 0
    from training.data import DATA_ROOT

    decisions = decide(args.returned, args.data_root or DATA_ROOT, args.limit, args.ship)
    print(json.dumps({t: {k: d[k] for k in ("gain_db", "ships")} for t, d in decisions.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
