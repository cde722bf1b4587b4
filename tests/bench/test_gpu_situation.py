"""The GPU visit in the lent machine's situation, rebuilt on the CPU (`bench.gpu_situation`): a fresh Python 3.11
venv with only torch, numpy and the GPU image's listed packages, plus the wheel set computed for it. Every
check step passes in its CPU mode (http and throughput included), the recipe's dry run returns what a device
brings back, and a carried wheel taken away fails the visit.

Slow: the environment is built once per lock (cached under .cache/gpu-situation/, minutes from a clean clone),
then the visit itself takes minutes on 2 cores."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import gpu_situation
from bench.gpu_visit import CHECK_STEPS, MAX_FILE_MIB, MAX_FILES

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2400),  # a clean clone builds the environment first (minutes), then the visit runs
    pytest.mark.skipif(shutil.which("python3.11") is None, reason="needs python3.11 to build the situation's venv"),
]


@pytest.fixture(scope="module")
def situation() -> gpu_situation.Situation:
    return gpu_situation.build("python3.11")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A training folder of a few photo-sized images (the recipe's dry run crops 32 px from them)."""
    root = tmp_path_factory.mktemp("data")
    (root / "train").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(root / "train" / f"{i}.png")
    return root


def visit(situation, out: Path, data_root: Path, wheels: Path, *extra: str) -> tuple[int, str, dict]:
    env = gpu_situation.clean_env() | {"PYTHON": str(situation.python)}
    env.pop("OUT", None)
    cmd = ["bash", "bench/gpu_visit.sh", "--cpu", "--out", str(out), "--wheels", str(wheels), "--data-root",
           str(data_root), *extra]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert (out / "visit.json").is_file(), res.stderr[-3000:]
    return res.returncode, res.stderr, json.loads((out / "visit.json").read_text())


def test_the_visit_passes_where_only_the_image_and_the_carried_wheels_are(situation, data_root, tmp_path):
    out = tmp_path / "out"
    rc, log, result = visit(situation, out, data_root, situation.wheels)
    assert rc == 0, log[-4000:]
    # the venv really lacks the serving packages: they came from the carried wheels
    unpacked = result["phases"]["packages"]["details"]["unpacked"]
    assert {"fastapi", "opentelemetry-api", "httptools", "pydantic", "uvicorn"} <= set(unpacked)
    assert all(u["installed"] is None for u in unpacked.values()), "the image's own versions were accepted"
    assert result["image"]["packages"]["torch"].startswith(gpu_situation.torch_version())

    check = json.loads((out / "gpu_check.json").read_text())["steps"]
    assert {name: s["status"] for name, s in check.items()} == dict.fromkeys(CHECK_STEPS, "pass")
    assert all(err == "" for err in check["environment"]["details"]["imports"].values())
    parity = check["eager_parity"]["details"]
    assert {f"{t} {p}" for t in ("deblur", "sr-x4", "inpaint") for p in ("fp32", "bf16")} <= set(parity)
    assert all(parity[k]["finite"] and parity[k]["max_abs_err"] <= parity[k]["tol"] for k in parity if k != "size")
    http = check["http"]["details"]
    assert http["deblur"]["psnr_vs_cpu_db"] >= 40 and http["inpaint"]["psnr_vs_cpu_db"] >= 40
    gpu_tests = check["pytest_gpu"]["details"]
    assert gpu_tests["tests"] > 0 and gpu_tests["skipped"] == gpu_tests["tests"], "no CUDA here: all skipped"
    rows = check["throughput"]["details"]["deblur"]
    assert all(r["statuses"] == {"200": r["requests"]} for r in rows)
    assert max(r["max_batch"] for r in rows) > 1, "concurrent requests never shared a batch"

    trained = json.loads((out / "gpu_recipe.json").read_text())["tasks"]
    assert {t: e["status"] for t, e in trained.items()} == dict.fromkeys(("deblur", "sr-x4", "inpaint"), "pass")
    assert all(e["steps"] == 2 for e in trained.values())
    # what comes back from a device: at most 8 files of at most 16 MiB, weights only (no optimiser state)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= MAX_FILES and all(p.stat().st_size <= MAX_FILE_MIB * 2**20 for p in files)
    assert sorted(p.name for p in files if p.suffix == ".safetensors") == [
        "deblur.safetensors",
        "inpaint.safetensors",
        "sr-x4.safetensors",
    ]
    assert result["phases"]["outputs"]["status"] == "pass" and result["failed"] == [] and result["rerun"] is None


def test_a_carried_wheel_taken_away_fails_the_visit(situation, data_root, tmp_path):
    wheels = tmp_path / "wheels"
    shutil.copytree(situation.wheels, wheels)
    dropped = next(wheels.glob("opentelemetry_api-*.whl"))
    dropped.unlink()
    out = tmp_path / "out"
    rc, _, result = visit(situation, out, data_root, wheels, "--only", "environment")
    assert rc == 1
    problems = result["phases"]["packages"]["details"]["problems"]
    assert any(p.startswith("opentelemetry-api") for p in problems), problems
    env_step = json.loads((out / "gpu_check.json").read_text())["steps"]["environment"]
    assert env_step["status"] == "fail"
    assert "opentelemetry" in env_step["details"]["error"]
    assert result["failed"] == ["environment"] and result["rerun"] == "bash bench/gpu_visit.sh --only environment"
