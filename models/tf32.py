"""TF32 on CUDA through one API: `fp32_precision`, the per-backend switch of torch >= 2.9.

Why one place: torch keeps two switches for the same thing, the legacy `allow_tf32` flags and
`fp32_precision`, and on torch 2.13 reading either after setting the other raises ("mix of the legacy
and new APIs"). The service, the GPU check and the tests all set TF32, so they all go through here.
Matmuls (cuBLAS) and convolutions (cuDNN) are switched together: "tf32" lets them use TF32 tensor
cores, "ieee" keeps full fp32. On a CPU the settings are stored and change nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def _switches() -> tuple[object, object]:
    return torch.backends.cuda.matmul, torch.backends.cudnn.conv


def set_tf32(enabled: bool) -> None:
    """TF32 on (`tf32`) or off (`ieee`) for fp32 matmuls and convolutions."""
    for backend in _switches():
        backend.fp32_precision = "tf32" if enabled else "ieee"


def tf32_enabled() -> bool:
    """Whether fp32 matmuls may use TF32 (the matmul switch; convolutions follow `set_tf32` too)."""
    return torch.backends.cuda.matmul.fp32_precision == "tf32"


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 on or off inside the block; the previous settings (whatever they were) come back after it."""
    old = [backend.fp32_precision for backend in _switches()]
    set_tf32(enabled)
    try:
        yield
    finally:
        for backend, value in zip(_switches(), old):
            backend.fp32_precision = value
