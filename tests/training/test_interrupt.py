"""Ctrl-C (SIGINT to the whole process group, as a terminal sends it) saves a resumable checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from .test_families import TINY_FLAGS

ROOT = Path(__file__).resolve().parents[2]


def test_ctrl_c_saves_then_resume_finishes(tmp_path, image_dir):
    flags = [f for f in TINY_FLAGS]
    flags[flags.index("--steps") + 1] = "100000"
    flags[flags.index("--workers") + 1] = "1"
    cmd = [sys.executable, "-m", "training", "stage1", "--task", "sr-x4", "--data", str(image_dir), "--out",
           str(tmp_path), "--patches", "32", "--batches", "2", *flags]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = tmp_path / "s1" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # the worker gets it too and must not break the save
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    state = torch.load(tmp_path / "s1" / "state.pt", weights_only=True)
    assert 3 <= state["step"] < 100000
    assert (tmp_path / "s1" / "model_latest.safetensors").is_file()
    stop = state["step"] + 2
    flags[flags.index("--steps") + 1] = str(stop)
    cmd = [*cmd[: cmd.index("--model-dim")], *flags, "--resume"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert torch.load(tmp_path / "s1" / "state.pt", weights_only=True)["step"] == stop
