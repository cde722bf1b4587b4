"""torchrun / DDP plumbing: process group, device per rank, the DDP wrapper.

`torchrun --nproc-per-node N -m training stage1 ...` sets RANK/WORLD_SIZE/LOCAL_RANK; we use NCCL
on CUDA and gloo on CPU. Without those variables everything here is a no-op (rank 0 of 1).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def init() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("DIFFIR_BACKEND") != "gloo" else "gloo"
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
