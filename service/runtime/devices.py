"""Resolve the configured device string to what is really available."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from models.tf32 import set_tf32
from models.tf32 import tf32_enabled as tf32_enabled  # re-exported: the service asks here

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(requested: str) -> torch.device:
    """`auto` means CUDA when a GPU is usable, else CPU; an explicit `cuda` without a GPU is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DIFFIR_DEVICE={requested} but no CUDA device is available")
    return device


def configure_inference_thread() -> None:
    """Flush denormal floats to zero on the thread that runs the model.

    Untrained or lightly trained weights can drive activations into the denormal range, where
    x86 arithmetic is several times slower (measured 5x on this model at 64²); zeroing them
    changes nothing visible in an 8-bit or 16-bit image.
    """
    torch.set_flush_denormal(True)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def enable_tf32() -> None:
    """Let fp32 matmuls and convolutions use TF32 tensor cores on CUDA (Ampere and later).

    TF32 keeps fp32's range with a 10-bit mantissa, ~1e-3 relative per product: far below what
    an 8-bit image shows, and several times the fp32 throughput. PyTorch leaves it off for
    matmuls by default; a served fp32 model should not pay for that. Set through `models.tf32`,
    the one place the project touches TF32 (mixing torch's two TF32 APIs raises).
    """
    set_tf32(True)


def release_cached_memory() -> None:
    """After an out-of-memory, before a retry in halves: free what the failed batch left and hand the CUDA
    caching allocator's free blocks back. A failure's traceback (and the activations in its frames) can sit
    in reference cycles that only the garbage collector breaks; the cache is emptied after that. Nothing
    more than a collection on a process without CUDA."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def math_mode(device: torch.device, precision: str) -> Callable[[], AbstractContextManager[object]]:
    """How a torch model runs at `precision` on `device`: a factory of the context each call enters.

    * CPU bf16/fp16: autocast (weights stay fp32; matmuls and convolutions run in the low
      precision on the CPU's bf16/fp16 units, norms and reductions in fp32).
    * CUDA fp32: TF32 tensor cores (`enable_tf32`). CUDA fp16/bf16 cast the weights instead
      (`TorchBackend`), so no context is needed.
    """
    if device.type == "cuda":
        if precision == "fp32":
            enable_tf32()
        return contextlib.nullcontext
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = PRECISIONS[precision]
    return lambda: torch.autocast(device.type, dtype=dtype)


def cpu_fingerprint() -> dict[str, object]:
    """What makes a speed measurement valid on this machine: CPU model, the ISA flags that decide
    which kernels run, the core count and the library versions."""
    import os
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile",
              "avx_vnni", "asimd", "bf16", "i8mm", "sve")  # fmt: skip
    return {
        "cpu": model,
        "isa": sorted(f for f in wanted if f in flags),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
