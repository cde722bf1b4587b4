"""torchrun / DDP plumbing: process group, device per rank, the DDP wrapper.

`torchrun --nproc-per-node N -m training stage1 ...` sets RANK/WORLD_SIZE/LOCAL_RANK. The
process-group backend is NCCL where CUDA is available and gloo otherwise; `DIFFIR_DIST_BACKEND`
(`nccl` or `gloo`) overrides that, e.g. gloo to train on the CPUs of a GPU machine. Every rank
binds its own GPU (`LOCAL_RANK`) before the process group exists, so that NCCL and every later
`cuda` allocation use that GPU rather than each opening a context on GPU 0. Without the torchrun
variables everything here is a no-op (rank 0 of 1).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

BACKEND_ENV = "DIFFIR_DIST_BACKEND"
BACKENDS = ("nccl", "gloo")


def process_group_backend() -> str:
    """`DIFFIR_DIST_BACKEND` when set, else NCCL with CUDA and gloo without."""
    choice = os.environ.get(BACKEND_ENV, "").strip().lower()
    if choice:
        if choice not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV}={choice!r}: expected one of {', '.join(BACKENDS)}")
        return choice
    return "nccl" if torch.cuda.is_available() else "gloo"


def init() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = process_group_backend()
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available() and (not dist.is_initialized() or dist.get_backend() == "nccl"):
            return torch.device("cuda", local_rank())
        return torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank())
    return dev


def wrap(module: nn.Module, device: torch.device, find_unused: bool) -> nn.Module:
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)
