"""DDP through torchrun: 2 CPU processes on gloo (loopback only) train in lock-step."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from .conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_train_in_sync(tmp_path, image_dir):
    cfg = tiny_config(tmp_path / "run", image_dir, steps=3, save_every=2)
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           str(Path(__file__).with_name("ddp_worker.py")), json.dumps(values)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "DIFFIR_BACKEND": "gloo"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r0 = torch.load(tmp_path / "run" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "run" / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    changed = [k for k in r0["after"] if not torch.equal(r0["after"][k], r0["before"][k])]
    assert changed, "no parameter was updated"
    for k in r0["after"]:  # different data per rank, identical weights: gradients were all-reduced
        assert torch.equal(r0["after"][k], r1["after"][k]), k
    assert (tmp_path / "run" / "s1" / "model_latest.safetensors").is_file()
    assert not (tmp_path / "run" / "rank2.pt").exists()
