"""ONNX Runtime backend: CUDA execution provider when present, else CPU — and we report the truth.

ONNX Runtime silently falls back to CPU when the CUDA provider cannot load (missing cuDNN, wrong
CUDA); `provider` is read from `session.get_providers()` after the session exists, so `/tasks`
and `diffir_model_info` show what really runs.
"""

from __future__ import annotations

import numpy as np
import torch

from service.runtime.artifacts import Artifact, model_info


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, artifacts: dict[str, Artifact], device: torch.device, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in available:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        self.sessions = {
            graph: ort.InferenceSession(str(a.path), sess_options=options, providers=providers)
            for graph, a in artifacts.items()
        }
        self.info = model_info(artifacts)
        self.provider = next(iter(self.sessions.values())).get_providers()[0]
        self.exact_large_prior = False
        self.supports_tiling = {"prior", "restorer"} <= self.sessions.keys()

    def _call(self, graph: str, a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> torch.Tensor:
        session = self.sessions[graph]
        feeds = {a_name: np.ascontiguousarray(a.numpy(), dtype=np.float32), b_name: b.numpy().astype(np.float32)}
        (out,) = session.run(None, feeds)
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def run(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if "full" in self.sessions:
            return self._call("full", "lq", lq, "noise", noise)
        return self.restore(lq, self.prior(lq, noise))

    def prior(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._call("prior", "lq", lq, "noise", noise)

    def restore(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        return self._call("restorer", "lq", lq, "ipr", ipr)
