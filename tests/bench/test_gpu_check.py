"""`bench/gpu_check.sh`: JSON after every step, a failed step fails the run and the rest still runs. Every step
passing in the CPU dry run is tested where the GPU machine's packages are rebuilt (test_gpu_situation.py)."""

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


def test_a_failed_step_fails_the_run_and_the_rest_still_runs(tmp_path):
    res, report = _run(tmp_path, DIFFIR_GPU_CHECK_STEPS="environment,onnxruntime",
                       DIFFIR_GPU_CHECK_BREAK="environment")  # fmt: skip
    assert res.returncode == 1
    assert report["steps"]["environment"]["status"] == "fail"
    assert "deliberately broken" in report["steps"]["environment"]["details"]["error"]
    assert report["steps"]["onnxruntime"]["status"] == "pass"
    assert report["failed"] == ["environment"] and report["writes"] == 4
    assert "FAILED: environment" in res.stderr


def test_a_nan_output_fails_eager_speed_instead_of_passing_as_fast(tmp_path, monkeypatch):
    """Old: a NaN comparison went through `max(0.0, nan)`, which is 0.0, and the step passed."""
    import torch

    from bench import gpu_check

    class NaNNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, lq, noise=None):
            return lq * self.scale * float("nan")

    ctx = gpu_check.Context(gpu_check.Plan.for_machine(cpu=True), tmp_path, tmp_path)
    ctx.nets = {"deblur": NaNNet(), gpu_check.OFFICIAL_TASK: NaNNet()}
    with pytest.raises(RuntimeError, match="not finite") as failed:
        gpu_check.step_eager_speed(ctx)
    assert "deblur fp32" in str(failed.value)
