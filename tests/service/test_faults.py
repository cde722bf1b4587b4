"""Sticky device faults and out-of-memory, recognised by exception type and CUDA error code before message; the
out-of-memory retry in halves runs with the failed batch's memory already released."""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

from service.scheduling.device_queue import DeviceQueue
from service.scheduling.faults import cuda_error_code, is_out_of_memory, is_sticky_device_error
from service.state import ServiceState


def accelerator_error(message: str, code: int) -> torch.AcceleratorError:
    """What torch raises for a CUDA error: the runtime's code in `error_code` (set the same way by torch)."""
    exc = torch.AcceleratorError(message)
    exc.error_code = code
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        accelerator_error("CUDA error: an illegal instruction was encountered", 715),
        accelerator_error("CUDA error: uncorrectable ECC error encountered", 214),
        accelerator_error("CUDA error: something worded differently next release", 700),  # the code decides
        RuntimeError("CUDA error: an illegal instruction was encountered"),  # no code: the words decide
        RuntimeError("CUDA error: uncorrectable ECC error encountered"),
        RuntimeError("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 719: unspecified launch failure ; GPU=0"),
        RuntimeError("CUDNN_STATUS_EXECUTION_FAILED"),
    ],
    ids=lambda e: f"{type(e).__name__}:{getattr(e, 'error_code', '-')}:{str(e)[:30]}",
)
def test_sticky_faults_are_recognised(exc):
    assert is_sticky_device_error(exc) and not is_out_of_memory(exc)


def test_a_wrapped_sticky_fault_is_recognised_through_the_chain():
    try:
        try:
            raise accelerator_error("CUDA error: misaligned address", 716)
        except RuntimeError as inner:
            raise ValueError("batch failed") from inner
    except ValueError as outer:
        assert is_sticky_device_error(outer)


@pytest.mark.parametrize(
    "exc",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        accelerator_error("CUDA error: out of memory", 2),
        RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"),
    ],
)
def test_out_of_memory_is_transient_not_sticky(exc):
    assert is_out_of_memory(exc) and not is_sticky_device_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        accelerator_error("CUDA error: invalid argument", 1),  # a bad call, the context survives
        RuntimeError("shape mismatch"),
        ValueError("illegal address"),  # not a runtime error from a device
    ],
)
def test_ordinary_failures_are_neither(exc):
    assert not is_sticky_device_error(exc) and not is_out_of_memory(exc)


def test_cuda_error_codes_come_from_the_attribute_then_the_message():
    assert cuda_error_code(accelerator_error("CUDA error: x", 715)) == 715
    assert cuda_error_code(RuntimeError("CUDA error 700: an illegal memory access")) == 700
    assert cuda_error_code(RuntimeError("no code here")) is None


def fake_state(queue: DeviceQueue) -> SimpleNamespace:
    """Just what `ServiceState._run_small` uses: the real device queue on a thread, the real methods."""
    state = SimpleNamespace(device=queue, mark_device_failed=lambda exc: None)
    state._on_device = lambda fn, *a, priority: ServiceState._on_device(state, fn, *a, priority=priority)
    state._run_small = lambda engine, jobs: ServiceState._run_small(state, engine, jobs)
    return state


class Activations:
    """Stands in for the tensors a failed forward leaves in its frames."""


@pytest.mark.anyio
async def test_the_retry_in_halves_runs_after_the_failed_batchs_memory_is_released(monkeypatch):
    """Old: the halves ran inside the `except` block, with the traceback (and the activations it keeps) alive,
    and the CUDA cache was never emptied."""
    alive_during_retry: list[bool] = []
    released: list[int] = []
    refs: list[weakref.ref] = []

    def run_batch(jobs):
        activations = Activations()  # a local of the failing frame, as a forward's tensors are
        if len(jobs) > 1:
            refs.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        alive_during_retry.append(any(r() is not None for r in refs))
        return [f"out-{jobs[0]}"]

    # a CUDA process: the real release runs, and its emptying of the cache is recorded
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: released.append(len(alive_during_retry)))
    with ThreadPoolExecutor(1) as pool:
        queue = DeviceQueue(pool)
        queue.start()
        state = fake_state(queue)
        engine = SimpleNamespace(name="deblur", run_batch=run_batch)
        jobs = [SimpleNamespace(timings={}, n=i) for i in range(4)]
        outputs = await ServiceState._run_small(state, engine, jobs)
        await queue.close()
    assert len(outputs) == 4 and len(refs) == 3  # 4 -> 2 + 2 -> 1 + 1 + 1 + 1
    assert alive_during_retry == [False] * 4, "a failed batch's activations were still referenced during a retry"
    assert released == [0, 0, 2], "the cache is emptied after each failure, before its halves"
    assert {job.timings["batch"] for job in jobs} == {1}


def test_the_halves_keep_their_order():
    async def main():
        def run_batch(jobs):
            if len(jobs) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return [j.n for j in jobs]

        with ThreadPoolExecutor(1) as pool:
            queue = DeviceQueue(pool)
            queue.start()
            state = fake_state(queue)
            jobs = [SimpleNamespace(timings={}, n=i) for i in range(5)]
            out = await ServiceState._run_small(state, SimpleNamespace(name="t", run_batch=run_batch), jobs)
            await queue.close()
            return out

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
