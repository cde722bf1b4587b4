"""Resolve the configured device string to what is really available."""

from __future__ import annotations

import torch


def resolve_device(requested: str) -> torch.device:
    """`auto` means CUDA when a GPU is usable, else CPU; an explicit `cuda` without a GPU is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DIFFIR_DEVICE={requested} but no CUDA device is available")
    return device


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"
