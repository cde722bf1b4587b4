"""ONNX Runtime backend: the CUDA execution provider when the device is CUDA, else the CPU one.

ONNX Runtime silently falls back to the CPU when the CUDA provider is missing or cannot load
(missing cuDNN, wrong CUDA). A service configured for CUDA must not quietly run 100x slower, so
that is a start-up error; `provider` is read back from the session, so `/tasks` and
`diffir_model_info` show what really runs. Tensor names come from the artifact's sidecar
(the contract in `models.graphs`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from service.runtime.artifacts import Artifact, model_info
from service.runtime.base import ExportedPrior

CUDA_ARENA_FRACTION = 0.75
"""ORT's CUDA memory arena stops growing at this share of the GPU's memory (default: no limit)."""
CUDA_BUCKET_MULTIPLE = 64
"""Pad to multiples of this on CUDA, so fewer distinct shapes reach cuDNN (each new one is planned)."""


def cuda_provider_options(device: torch.device) -> dict[str, Any]:
    """Heuristic cuDNN algorithm choice (the default exhaustive search re-benchmarks every new input
    shape, seconds each), a bounded arena that grows only by what is requested."""
    index = device.index or 0
    total = torch.cuda.get_device_properties(index).total_memory if torch.cuda.is_available() else 16 << 30
    return {
        "device_id": index,
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "gpu_mem_limit": int(total * CUDA_ARENA_FRACTION),
        "do_copy_in_default_stream": True,
    }


def providers_for(device: torch.device, available: list[str]) -> list[Any]:
    """The provider list for a session on `device`; a CUDA device without the CUDA provider is an error."""
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise RuntimeError(
            f"device {device} needs ONNX Runtime's CUDAExecutionProvider, but this onnxruntime has only "
            f"{', '.join(available)} (install onnxruntime-gpu, or set DIFFIR_DEVICE=cpu)"
        )
    return [("CUDAExecutionProvider", cuda_provider_options(device)), "CPUExecutionProvider"]


class OnnxBackend(ExportedPrior):
    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, artifacts: dict[str, Artifact], device: torch.device, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = providers_for(device, ort.get_available_providers())
        self.sessions = {
            graph: ort.InferenceSession(str(a.path), sess_options=options, providers=providers)
            for graph, a in artifacts.items()
        }
        self.names = {graph: (*a.inputs, a.output) for graph, a in artifacts.items()}
        self.info = model_info(artifacts)
        self.provider = next(iter(self.sessions.values())).get_providers()[0]
        if device.type == "cuda" and self.provider != "CUDAExecutionProvider":
            raise RuntimeError(f"ONNX Runtime could not load its CUDA provider for {device} (it would run on the CPU)")
        self.bucket_multiple = CUDA_BUCKET_MULTIPLE if device.type == "cuda" else 0
        self.supports_tiling = {"prior", "restorer"} <= self.sessions.keys()

    def _call(self, graph: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a_name, b_name, _ = self.names[graph]
        feeds = {
            a_name: np.ascontiguousarray(a.numpy(), dtype=np.float32),
            b_name: np.ascontiguousarray(b.numpy(), dtype=np.float32),
        }
        (out,) = self.sessions[graph].run(None, feeds)
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def run(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if "full" in self.sessions:
            return self._call("full", lq, noise)
        return self.restore(lq, self.prior(lq, noise))

    def prior(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._call("prior", lq, noise)

    def restore(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        return self._call("restorer", lq, ipr)
