"""PyTorch eager backend: our `.safetensors` checkpoints or official `.pth`/`.ckpt` files.

This is the only place the service touches the network classes, and only through the model's
public methods (`forward`, `prior`, `prior_windowed`, `restore`). The prior of a very large
image is computed *exactly* with bounded memory (`DiffIRS2.prior_windowed`).

Precision: on the CPU, `bf16`/`fp16` run under autocast (fp32 weights, low-precision matmuls and
convolutions); on CUDA they cast the weights, and `fp32` uses TF32 tensor cores
(`service.runtime.devices.math_mode`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from service.runtime.base import ModelInfo
from service.runtime.devices import PRECISIONS, describe, math_mode

PRIOR_WINDOW = 256  # window edge at CPEN resolution (1/4 of the DIRformer input for most tasks)


class _DevicePrior:
    """`models.diffir.WindowedPrior` stepped under this backend's math mode, IPR back on the CPU."""

    def __init__(self, run, math, out) -> None:  # type: ignore[no-untyped-def]
        self.run, self.math, self.out = run, math, out

    @property
    def units(self) -> int:
        return self.run.units

    def step(self) -> bool:
        with torch.inference_mode(), self.math():
            return self.run.step()

    @property
    def ipr(self) -> torch.Tensor:
        return self.out(self.run.ipr)


def _version(meta: dict | None, sha256: str) -> str:
    if meta:
        provenance = meta.get("provenance") or {}
        for value in (meta.get("version"), provenance.get("version"), provenance.get("git_commit")):
            if value:
                return str(value)
    return f"sha256:{sha256[:12]}"


class TorchBackend:
    name = "torch"
    supports_tiling = True
    exact_large_prior = True  # `prior` runs CPEN window by window: exact and memory-bounded

    def __init__(self, path: Path, variant: str | None, device: torch.device, precision: str = "fp32") -> None:
        from models.checkpoint import load_model, read_sidecar, sha256_file

        self.device = device
        self.precision = precision
        self.math = math_mode(device, precision)
        self.dtype = PRECISIONS[precision] if device.type == "cuda" else torch.float32
        self.net = load_model(path, variant=variant, device=device).to(self.dtype)
        meta = read_sidecar(path) if path.suffix == ".safetensors" else None
        sha = meta["sha256"] if meta else sha256_file(path)
        self.info = ModelInfo.from_config(self.net.config, version=_version(meta, sha), sha256=sha, source=str(path))
        self.provider = describe(device) + ("" if precision == "fp32" else f" {precision}")

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, self.dtype, non_blocking=True)

    @staticmethod
    def _out(y: torch.Tensor) -> torch.Tensor:
        return y.to("cpu", torch.float32)

    def run(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self.math():
            return self._out(self.net(self._in(lq), noise=self._in(noise)))

    def restore(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self.math():
            return self._out(self.net.restore(self._in(lq), self._in(ipr)))

    def prior(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self.math():
            return self._out(self.net.prior_windowed(self._in(lq), self._in(noise), PRIOR_WINDOW))

    def prior_run(self, lq: torch.Tensor, noise: torch.Tensor, tile_edge: int) -> _DevicePrior:
        """One CPEN window per unit, each covering at most a tile's input area (CPEN runs at
        1/unshuffle of the input's edge): a unit costs at most about one DIRformer tile (CPEN is
        0.5-0.9x the DIRformer per pixel in the shipped models), so small jobs slip in between."""
        from models.diffir import WindowedPrior

        window = max(8, min(PRIOR_WINDOW, tile_edge // self.net.config.cpen_s2_unshuffle))
        with torch.inference_mode():
            run = WindowedPrior(self.net, self._in(lq), self._in(noise), window)
        return _DevicePrior(run, self.math, self._out)
