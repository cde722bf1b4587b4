"""Which model failures mean what: a sticky device fault, running out of memory, or a bad output.

A CUDA illegal-address, illegal-instruction, ECC or device-side-assert error poisons the whole CUDA
context: every later call fails too, so the process must report unhealthy and be restarted. Out of
memory is transient and depends on the batch: the batch is retried in halves. A non-finite output
(NaN/inf, e.g. an fp16 overflow) must never be encoded into an image.

Recognised by what the error is before what it says: torch raises `torch.OutOfMemoryError` for an
allocation failure and `torch.AcceleratorError` carrying the CUDA runtime's `error_code` for a CUDA
error; ONNX Runtime and older torch report the same codes only in the message ("CUDA error 700",
"CUDA failure 719: ...", "cudaErrorIllegalAddress"). The whole chain of an exception is examined
(`__cause__`, `__context__`), since a failure on the inference thread may arrive wrapped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch

STICKY_CUDA_ERRORS = {
    214: "cudaErrorECCUncorrectable",
    220: "cudaErrorNvlinkUncorrectable",
    702: "cudaErrorLaunchTimeout",
    700: "cudaErrorIllegalAddress",
    710: "cudaErrorAssert",
    714: "cudaErrorHardwareStackError",
    715: "cudaErrorIllegalInstruction",
    716: "cudaErrorMisalignedAddress",
    717: "cudaErrorInvalidAddressSpace",
    718: "cudaErrorInvalidPc",
    719: "cudaErrorLaunchFailure",
    999: "cudaErrorUnknown",
}
"""cudaError_t values after which the CUDA context is unusable (the CUDA runtime API's documentation
calls them sticky: "the process must be terminated and relaunched")."""
OOM_CUDA_ERRORS = {2: "cudaErrorMemoryAllocation"}
STICKY_MARKERS = (
    "illegal memory access",
    "illegal address",
    "illegal instruction",
    "device-side assert",
    "unspecified launch failure",
    "uncorrectable ecc error",
    "uncorrectable nvlink error",
    "hardware stack error",
    "invalid program counter",
    "misaligned address",
    "launch timed out",
    "cublas_status_execution_failed",
    "cudnn_status_execution_failed",
    "cudnn_status_mapping_error",
    *(name.lower() for name in STICKY_CUDA_ERRORS.values()),
)
"""The same faults as the runtime words them (compared lower-case), for errors that carry no code."""
OOM_MARKERS = ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation", "cublas_status_alloc_failed")
CODE_IN_MESSAGE = re.compile(r"cuda (?:error|failure)[ :]*(\d+)", re.IGNORECASE)


class NonFiniteOutput(RuntimeError):
    """The model returned NaN or infinite values for this batch."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def cuda_error_code(exc: BaseException) -> int | None:
    """The cudaError_t of an exception: `torch.AcceleratorError.error_code`, else a code in its message."""
    code = getattr(exc, "error_code", None)
    if isinstance(code, int):
        return code
    match = CODE_IN_MESSAGE.search(str(exc))
    return int(match.group(1)) if match else None


def is_sticky_device_error(exc: BaseException) -> bool:
    """True for faults after which the accelerator cannot be used again by this process."""
    for err in _chain(exc):
        if _out_of_memory(err):
            return False
        code = cuda_error_code(err)
        if code is not None and code in STICKY_CUDA_ERRORS:
            return True
        text = str(err).lower()
        if isinstance(err, RuntimeError) and any(marker in text for marker in STICKY_MARKERS):
            return True
    return False


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/ONNX Runtime allocation failures: `torch.OutOfMemoryError`, cudaErrorMemoryAllocation, the messages."""
    return any(_out_of_memory(err) for err in _chain(exc))


def _out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)) or cuda_error_code(err) in OOM_CUDA_ERRORS:
        return True
    return isinstance(err, RuntimeError) and any(marker in str(err).lower() for marker in OOM_MARKERS)
