"""Which model failures mean what: a sticky device fault, running out of memory, or a bad output.

A CUDA illegal-address or device-side assert poisons the whole CUDA context: every later call fails
too, so the process must report unhealthy and be restarted. Out of memory is transient and depends
on the batch: the batch is retried in halves. A non-finite output (NaN/inf, e.g. an fp16 overflow)
must never be encoded into an image.
"""

from __future__ import annotations

STICKY_MARKERS = (
    "illegal memory access",
    "illegal address",
    "device-side assert",
    "unspecified launch failure",
    "cudaErrorLaunchFailure",
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "misaligned address",
)
OOM_MARKERS = ("out of memory", "failed to allocate memory", "cudaErrorMemoryAllocation")


class NonFiniteOutput(RuntimeError):
    """The model returned NaN or infinite values for this batch."""


def is_sticky_device_error(exc: BaseException) -> bool:
    """True for faults after which the accelerator cannot be used again by this process."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(marker in text for marker in STICKY_MARKERS)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/ONNX Runtime allocation failures (torch.cuda.OutOfMemoryError is a RuntimeError)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker.lower() in text for marker in OOM_MARKERS)
