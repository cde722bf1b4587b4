"""PyTorch eager backend: our `.safetensors` checkpoints or official `.pth`/`.ckpt` files.

This is the only place the service touches the network classes. The prior of a very large
image is computed *exactly* with bounded memory: CPEN's trunk is a stack of 3x3 convolutions
followed by a global average pool, so running the trunk on overlapping windows (with a halo
wider than its receptive field) and averaging the pooled sums gives the same condition vector
as the whole image, without ever holding its full-resolution feature maps.
"""

from __future__ import annotations

from pathlib import Path

import torch

from service.runtime.base import ModelInfo
from service.runtime.devices import describe

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRIOR_WINDOW = 256  # window edge at CPEN resolution (1/4 of the DIRformer input for most tasks)


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
        self.dtype = _DTYPES[precision] if device.type == "cuda" else torch.float32
        self.net = load_model(path, variant=variant, device=device).to(self.dtype)
        meta = read_sidecar(path) if path.suffix == ".safetensors" else None
        sha = meta["sha256"] if meta else sha256_file(path)
        self.info = ModelInfo.from_config(self.net.config, version=_version(meta, sha), sha256=sha, source=str(path))
        precision_label = "" if self.dtype == torch.float32 else f" {precision}"
        self.provider = describe(device) + precision_label

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, self.dtype, non_blocking=True)

    @staticmethod
    def _out(y: torch.Tensor) -> torch.Tensor:
        return y.to("cpu", torch.float32)

    def run(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self._out(self.net(self._in(lq), noise=self._in(noise)))

    def restore(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self._out(self.net.restore(self._in(lq), self._in(ipr)))

    def prior(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            from models.cpen import cpen_s2_input

            x = cpen_s2_input(self.net.config, self._in(lq))
            cpen = self.net.condition
            if x.shape[-2] * x.shape[-1] <= PRIOR_WINDOW * PRIOR_WINDOW:
                condition = cpen(x)
            else:
                condition = cpen.mlp(self._pooled_trunk(cpen.E, x))
            records = self.net.diffusion.reverse(condition, self._in(noise))
            return self._out(records[-1].z_out)

    @staticmethod
    def _pooled_trunk(trunk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Global mean of `trunk(x)` computed window by window (exact up to float summation order)."""
        convs = [m for m in trunk.modules() if isinstance(m, torch.nn.Conv2d)]
        halo = sum((m.kernel_size[0] - 1) // 2 * m.dilation[0] for m in convs)
        h, w = x.shape[-2:]
        total = None
        for top in range(0, h, PRIOR_WINDOW):
            for left in range(0, w, PRIOR_WINDOW):
                bottom, right = min(top + PRIOR_WINDOW, h), min(left + PRIOR_WINDOW, w)
                t0, l0 = max(top - halo, 0), max(left - halo, 0)
                window = x[..., t0 : min(bottom + halo, h), l0 : min(right + halo, w)]
                feat = trunk(window.contiguous(memory_format=torch.channels_last))
                core = feat[..., top - t0 : top - t0 + bottom - top, left - l0 : left - l0 + right - left]
                part = core.float().sum(dim=(2, 3))
                total = part if total is None else total + part
        assert total is not None
        return (total / (h * w)).to(x.dtype)
