"""TorchScript backend: traced graphs loaded with `torch.jit.load` (no model code needed)."""

from __future__ import annotations

import torch

from service.runtime.artifacts import Artifact, model_info
from service.runtime.base import ExportedPrior
from service.runtime.devices import describe


class TorchScriptBackend(ExportedPrior):
    name = "torchscript"
    precision = "fp32"

    def __init__(self, artifacts: dict[str, Artifact], device: torch.device) -> None:
        self.device = device
        self.modules = {
            graph: torch.jit.load(str(a.path), map_location=device).eval() for graph, a in artifacts.items()
        }
        self.info = model_info(artifacts)
        self.provider = describe(device)
        self.supports_tiling = {"prior", "restorer"} <= self.modules.keys()

    def _call(self, graph: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.modules[graph](a.to(self.device), b.to(self.device)).to("cpu", torch.float32)

    def run(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if "full" in self.modules:
            return self._call("full", lq, noise)
        return self.restore(lq, self.prior(lq, noise))

    def prior(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._call("prior", lq, noise)

    def restore(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        return self._call("restorer", lq, ipr)
