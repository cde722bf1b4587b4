"""`bench/gpu_check.sh` in its CPU dry run: the same steps as on a GPU, JSON after every step, loud failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["environment", "eager_parity", "torchscript", "eager_speed", "onnxruntime", "pytest_gpu", "http", "throughput"]


def _run(out: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    # PYTHON: this interpreter (`make test PYTHON=python3.11` leaves the bare system one in the environment)
    full_env = {**os.environ, "DIFFIR_GPU_CHECK_CPU": "1", "DIFFIR_GPU_CHECK_OUT": str(out), "PYTHON": sys.executable}
    full_env.update(env)
    full_env.pop("OUT", None)
    res = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env=full_env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    report = out / "gpu_check.json"
    assert report.exists(), f"no {report.name} written (exit {res.returncode}): {res.stderr[-3000:]}"
    return res, json.loads(report.read_text())


@pytest.mark.slow
def test_cpu_dry_run_passes_every_step(tmp_path):
    res, report = _run(tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    steps = report["steps"]
    assert list(steps) == STEPS
    assert {name: s["status"] for name, s in steps.items()} == dict.fromkeys(STEPS, "pass")
    # written once at the start, once after each step, once at the end
    assert report["writes"] == len(STEPS) + 2 and report["finished"] and report["failed"] == []
    # what the steps compared, not just that they ran
    parity = steps["eager_parity"]["details"]
    assert {f"{t} {p}" for t in ("deblur", "sr-x4", "inpaint") for p in ("fp32", "bf16")} <= set(parity)
    assert all(parity[k]["finite"] and parity[k]["max_abs_err"] <= parity[k]["tol"] for k in parity if k != "size")
    http = steps["http"]["details"]
    assert http["deblur"]["psnr_vs_cpu_db"] >= 40 and http["inpaint"]["psnr_vs_cpu_db"] >= 40
    assert {r["provider"] for r in http["providers"].values()} == {"cpu"}
    gpu_tests = steps["pytest_gpu"]["details"]
    assert gpu_tests["tests"] > 0 and gpu_tests["skipped"] == gpu_tests["tests"], "no CUDA here: all skipped"
    assert steps["onnxruntime"]["details"]["runs"]["CPUExecutionProvider"]["in_use"] == "CPUExecutionProvider"
    rows = steps["throughput"]["details"]["deblur"]
    assert all(r["statuses"] == {"200": r["requests"]} for r in rows)
    assert max(r["max_batch"] for r in rows) > 1, "concurrent requests never shared a batch"
    assert (tmp_path / "gpu_check.md").read_text().count("| deblur |") == len(rows)


def test_a_failed_step_fails_the_run_and_the_rest_still_runs(tmp_path):
    res, report = _run(tmp_path, DIFFIR_GPU_CHECK_STEPS="environment,onnxruntime",
                       DIFFIR_GPU_CHECK_BREAK="environment")  # fmt: skip
    assert res.returncode == 1
    assert report["steps"]["environment"]["status"] == "fail"
    assert "deliberately broken" in report["steps"]["environment"]["details"]["error"]
    assert report["steps"]["onnxruntime"]["status"] == "pass"
    assert report["failed"] == ["environment"] and report["writes"] == 4
    assert "FAILED: environment" in res.stderr


def test_missing_packages_are_unpacked_from_carried_wheels(tmp_path, monkeypatch):
    """What the environment step does on a machine without the serving packages (offline, no pip)."""
    import sys
    import zipfile

    from bench import gpu_check

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "diffir_probe_pkg-1.0-py3-none-any.whl", "w") as whl:
        whl.writestr("diffir_probe_pkg/__init__.py", "ANSWER = 42\n")
        whl.writestr(
            "diffir_probe_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: diffir-probe-pkg\nVersion: 1.0\n"
        )
    monkeypatch.setattr(gpu_check, "NEEDED", {"diffir_probe_pkg": "diffir-probe-pkg"})
    monkeypatch.setenv("DIFFIR_WHEELS", str(wheels))
    monkeypatch.setattr(sys, "path", list(sys.path))
    ctx = gpu_check.Context(gpu_check.Plan.for_machine(cpu=True), tmp_path / "out", tmp_path / "tmp")
    assert gpu_check.install_missing(ctx) == ["diffir_probe_pkg-1.0-py3-none-any.whl"]
    import diffir_probe_pkg

    assert diffir_probe_pkg.ANSWER == 42
    assert ctx.env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "tmp" / "site")
    sys.modules.pop("diffir_probe_pkg")
