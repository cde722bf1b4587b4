"""DDP through torchrun: 2 CPU processes on gloo (loopback only) train in lock-step; on CUDA each
rank binds its own GPU before the process group exists (checked with a faked torch.cuda)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import distributed

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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "DIFFIR_DIST_BACKEND": "gloo"}
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


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with 4 GPUs as far as `training.distributed` can tell; records the calls in order."""
    calls: list[tuple] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: calls.append(("set_device", dev)))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: any(c[0] == "init" for c in calls))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: next(c[1] for c in calls if c[0] == "init"))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.delenv(distributed.BACKEND_ENV, raising=False)
    monkeypatch.setenv("DIFFIR_BACKEND", "gloo")  # the service's setting: must not pick the training backend
    return calls


def test_each_rank_binds_its_gpu_before_the_process_group(fake_cuda):
    distributed.init()
    assert fake_cuda == [("set_device", 2), ("init", "nccl")]
    assert distributed.pick_device("auto") == torch.device("cuda", 2)
    assert distributed.pick_device("cuda") == torch.device("cuda", 2)


def test_training_backend_has_its_own_setting(fake_cuda, monkeypatch):
    monkeypatch.setenv(distributed.BACKEND_ENV, "gloo")
    distributed.init()
    assert fake_cuda == [("set_device", 2), ("init", "gloo")]
    assert distributed.pick_device("auto") == torch.device("cpu")


def test_unknown_training_backend_is_refused(fake_cuda, monkeypatch):
    monkeypatch.setenv(distributed.BACKEND_ENV, "mpi2")
    with pytest.raises(ValueError, match="DIFFIR_DIST_BACKEND"):
        distributed.init()
    assert fake_cuda == []


def test_single_process_touches_no_device(fake_cuda, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.init()
    assert fake_cuda == []
