"""The whole visit to a lent GPU machine in one call: the GPU check, then the training recipe, in about 9 minutes.

Run it through `bench/gpu_visit.sh` (which documents the device call). Phases, each recorded in
`$OUT/visit.json` as soon as it ends, so a call cut short still brings back what it did:

1. `size`      the working tree plus the carried folders, measured (the device tool carries at most 64 MiB)
2. `packages`  the image's own distributions and versions (`image` in visit.json: `python -m bench.gpu_wheels
               fetch --image visit.json` computes the exact carried set from it), then the carried wheels the
               machine needs are unpacked into a folder on every later phase's PYTHONPATH
3. `check`     `bench.gpu_check` (its 8 steps; gpu_check.json/.md and service.log in `$OUT`)
4. `train`     `training.gpu_recipe train` on the carried data subset (`<task>.safetensors` per task and
               gpu_recipe.json in `$OUT`)
5. `outputs`   what `$OUT` holds against what comes back from a device (at most 8 files of 16 MiB each)

At the end visit.json names the failed steps and the command that reruns only them (`--only`), which is also
printed. `--cpu` runs the same visit on a CPU at toy sizes (the check's CPU mode, the recipe's dry run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import gpu_wheels

LOG = logging.getLogger("gpu_visit")
ROOT = Path(__file__).resolve().parents[1]
CHECK_STEPS = ("environment", "eager_parity", "torchscript", "eager_speed", "onnxruntime", "pytest_gpu", "http",
               "throughput")  # fmt: skip
"""`bench.gpu_check.STEPS`, named here so that this script imports neither torch nor the check."""
TRAIN_TASKS = ("deblur", "sr-x4", "inpaint")
CARRY = ("wheels/py312", "gpu-data")
"""The ignored folders the device call carries: the computed wheel set and the training data subset."""
LIMIT_MIB = 64
"""What the device tool carries: the working tree plus the carried folders."""
MARGIN_MIB = 2.0
DATA_MAX_MIB = 10.0
"""The training subset takes what the tree and the wheels leave, less a margin for the tree growing, up to this."""
MAX_FILES, MAX_FILE_MIB = 8, 16
"""What comes back from the device's `$OUT`."""
BUDGET_S = {"cuda": 540.0, "cpu": 1500.0}
CHECK_BUDGET_S = {"cuda": 320.0, "cpu": 900.0}
"""Seconds for the whole visit and for the check within it. On the GPU: about 9 minutes, inside the device
tool's 10-minute command limit with room for the machine's start. On a CPU (a test) only a runaway is stopped."""
TRAIN_OVERHEAD_S = 75.0
"""Per visit, outside the recipe's training minutes: loading data, three start-ups and final saves."""


# --- sizes ---------------------------------------------------------------------------------------
def tree_files(root: Path) -> list[Path]:
    """The files that travel as the working tree: tracked plus untracked-not-ignored (git), else all but .git."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True,
                             check=True).stdout  # fmt: skip
        return [root / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in root.rglob("*") if ".git" not in p.relative_to(root).parts]


def measure(root: Path, carry: tuple[str, ...]) -> dict[str, Any]:
    carried = {c: sum(p.stat().st_size for p in (root / c).rglob("*") if p.is_file()) for c in carry}
    tree = sum(p.stat().st_size for p in tree_files(root) if p.is_file() and not any(
        p.is_relative_to(root / c) for c in carry))  # fmt: skip
    total = tree + sum(carried.values())
    return {
        "tree_mib": round(tree / 2**20, 2),
        "carry_mib": {c: round(b / 2**20, 2) for c, b in carried.items()},
        "total_mib": round(total / 2**20, 2),
        "limit_mib": LIMIT_MIB,
        "fits": total <= LIMIT_MIB * 2**20,
        "missing": [c for c in carry if not (root / c).is_dir()],
    }


def outputs(out: Path) -> dict[str, Any]:
    files = sorted(p for p in out.rglob("*") if p.is_file())
    big = [str(p.relative_to(out)) for p in files if p.stat().st_size > MAX_FILE_MIB * 2**20]
    return {
        "files": {str(p.relative_to(out)): round(p.stat().st_size / 2**20, 2) for p in files},
        "count": len(files),
        "too_big": big,
        "fits": len(files) <= MAX_FILES and not big,
    }


# --- the visit -----------------------------------------------------------------------------------
class Visit:
    def __init__(self, out: Path, cpu: bool, only: list[str] | None) -> None:
        self.out, self.cpu, self.only = out, cpu, only
        self.started = time.perf_counter()
        self.data: dict[str, Any] = {"mode": "cpu dry run" if cpu else "cuda", "only": only, "phases": {}}
        self.env = dict(os.environ)
        self.kind = "cpu" if cpu else "cuda"

    def left(self) -> float:
        return BUDGET_S[self.kind] - (time.perf_counter() - self.started)

    def record(self, phase: str, status: str, details: Any) -> None:
        self.data["phases"][phase] = {"status": status, "at_s": round(time.perf_counter() - self.started, 1)}
        self.data["phases"][phase]["details"] = details
        self.write()

    def write(self) -> None:
        tmp = self.out / "visit.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.out / "visit.json")

    def wanted(self, names: tuple[str, ...]) -> list[str]:
        return [n for n in names if self.only is None or n in self.only]

    def run(self, cmd: list[str], timeout: float, env: dict[str, str]) -> int:
        LOG.info("+ %s", " ".join(cmd))
        try:
            return subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return 124


def packages(visit: Visit, wheels: Path, site: Path) -> None:
    visit.data["image"] = gpu_wheels.image_versions()
    report = gpu_wheels.provide(wheels, site)
    visit.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    visit.env["DIFFIR_WHEELS"] = str(wheels)
    visit.record("packages", "fail" if report["problems"] else "pass", report)


def check(visit: Visit) -> list[str]:
    steps = visit.wanted(CHECK_STEPS)
    if not steps:
        return []
    training_follows = bool(visit.wanted(tuple(f"train-{t}" for t in TRAIN_TASKS)))
    budget = min(CHECK_BUDGET_S[visit.kind], visit.left() - 30) if training_follows else visit.left() - 30
    env = visit.env | {"DIFFIR_GPU_CHECK_OUT": str(visit.out), "DIFFIR_GPU_CHECK_BUDGET_S": str(round(budget))}
    env |= {"DIFFIR_GPU_CHECK_STEPS": ",".join(steps), "DIFFIR_GPU_CHECK_CPU": "1" if visit.cpu else "0"}
    env.pop("OUT", None)
    rc = visit.run([sys.executable, "-m", "bench.gpu_check", "--out", str(visit.out)], budget + 60, env)
    report = visit.out / "gpu_check.json"
    results = json.loads(report.read_text())["steps"] if report.is_file() else {}
    failed = [s for s in steps if results.get(s, {}).get("status") not in ("pass", "unavailable")]
    visit.record(
        "check",
        "fail" if failed else "pass",
        {"returncode": rc, "failed": failed, "statuses": {s: r["status"] for s, r in results.items()}},
    )
    return failed


def train(visit: Visit, data_root: Path) -> list[str]:
    tasks = [t for t in TRAIN_TASKS if f"train-{t}" in visit.wanted(tuple(f"train-{t}" for t in TRAIN_TASKS))]
    if not tasks:
        return []
    minutes = max(0.3, (visit.left() - TRAIN_OVERHEAD_S) / 60)
    cmd = [sys.executable, "-m", "training.gpu_recipe", "train", "--out", str(visit.out), "--data-root", str(data_root)]
    cmd += ["--minutes", f"{minutes:.2f}", "--tasks", *tasks] + (["--dry-run"] if visit.cpu else [])
    rc = visit.run(cmd, max(60.0, visit.left() - 10), visit.env)
    log = visit.out / "gpu_recipe.json"
    done = json.loads(log.read_text())["tasks"] if log.is_file() else {}
    failed = [f"train-{t}" for t in tasks if done.get(t, {}).get("status") != "pass"]
    details = {"returncode": rc, "minutes": round(minutes, 2), "failed": failed,
               "steps": {t: done.get(t, {}).get("steps") for t in tasks}}  # fmt: skip
    visit.record("train", "fail" if failed else "pass", details)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu_visit.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench/results/gpu-visit"))
    parser.add_argument("--cpu", action="store_true", help="the same visit on a CPU at toy sizes")
    parser.add_argument("--only", help="comma-separated steps to (re)run: check steps and train-<task>")
    parser.add_argument("--wheels", type=Path, default=None, help="default: wheels/py<this Python>")
    parser.add_argument("--data-root", type=Path, default=ROOT / "gpu-data", help="the carried training data")
    parser.add_argument("--size-only", action="store_true", help="print the tree + carry size and stop")
    parser.add_argument("--room", action="store_true", help="print the MiB the training subset may take and stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gpu_visit %(message)s", stream=sys.stderr)
    known = CHECK_STEPS + tuple(f"train-{t}" for t in TRAIN_TASKS)
    only = [s for s in (args.only or "").split(",") if s] or None
    if only and set(only) - set(known):
        parser.error(f"unknown steps {sorted(set(only) - set(known))}; known: {', '.join(known)}")
    size = measure(ROOT, CARRY)
    LOG.info("tree %.2f MiB + carried %s = %.2f MiB (limit %d MiB)", size["tree_mib"], size["carry_mib"],
             size["total_mib"], LIMIT_MIB)  # fmt: skip
    if args.room:
        room = (
            LIMIT_MIB - MARGIN_MIB - size["tree_mib"] - sum(v for c, v in size["carry_mib"].items() if c != "gpu-data")
        )
        print(f"{max(0.0, min(DATA_MAX_MIB, room)):.2f}")
        return 0 if room > 1 else 1
    if args.size_only:
        print(json.dumps(size))
        return 0 if size["fits"] else 1
    args.out.mkdir(parents=True, exist_ok=True)
    visit = Visit(args.out, args.cpu, only)
    # a CPU run carries nothing: there the size is information, on the GPU machine it is a failure
    visit.record("size", "pass" if size["fits"] else "warn" if args.cpu else "fail", size)
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="diffir-site-") as site:  # one per visit: never another run's unpacking
        packages(visit, (args.wheels or ROOT / "wheels" / version).resolve(), Path(site))
        failed = check(visit) + train(visit, args.data_root)
    result = outputs(args.out)
    visit.record("outputs", "pass" if result["fits"] else "fail", result)
    again = failed + (["http"] if "throughput" in failed and "http" not in failed else [])  # it starts the service
    again = [s for s in known if s in again]
    rerun = f"bash bench/gpu_visit.sh --only {','.join(again)}" if failed else None
    visit.data.update(failed=failed, rerun=rerun, total_s=round(time.perf_counter() - visit.started, 1))
    visit.write()
    LOG.info("failed: %s; rerun only those: %s", ", ".join(failed) or "none", rerun or "-")
    bad_phases = [p for p, r in visit.data["phases"].items() if r["status"] == "fail"]
    return 1 if failed or bad_phases else 0


if __name__ == "__main__":
    sys.exit(main())
