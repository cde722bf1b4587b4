"""The one interface every backend implements, and what the service knows about a model.

Inputs are CPU float32 tensors already padded to `ModelInfo.size_multiple` (and, for
inpainting, already the 4-channel `[image * (1 - mask), mask]`); outputs come back as CPU
float32. Keeping device moves and dtype casts inside the backend means the batcher, the tiler
and the image code never care where the model runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from service.scheduling.tiling import OneShotPrior, PriorRun


@dataclass(frozen=True)
class ModelInfo:
    """The facts the service needs about a loaded model (from its config/sidecar)."""

    variant: str
    kind: str  # "deblur" | "sr" | "inpaint"
    scale: int
    size_multiple: int
    pad_mode: str
    in_channels: int
    ipr_dim: int
    version: str
    sha256: str
    source: str

    @property
    def needs_mask(self) -> bool:
        return self.kind == "inpaint"

    @classmethod
    def from_config(cls, config: Any, *, version: str, sha256: str, source: str) -> ModelInfo:
        """From a `models.ModelConfig` (duck-typed so artifacts need no model code)."""
        return cls(
            variant=config.name,
            kind=config.kind,
            scale=config.scale,
            size_multiple=config.size_multiple,
            pad_mode=config.pad_mode,
            in_channels=config.image_channels,
            ipr_dim=config.ipr_dim,
            version=version,
            sha256=sha256,
            source=source,
        )


class Backend(Protocol):
    """A loaded model on some device; every call is synchronous and runs off the event loop."""

    info: ModelInfo
    name: str
    """"torch", "torchscript" or "onnxruntime"."""
    provider: str
    """What really executes it, read back after loading (e.g. "cpu", "cuda:0", "CPUExecutionProvider")."""
    supports_tiling: bool
    """True when `prior` and `restore` exist separately (needed for tiled restoration)."""
    exact_large_prior: bool
    """True when `prior` on a huge image keeps memory bounded by itself (else the engine downscales)."""

    def run(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Full restoration of a padded batch: (B, C, H, W), (B, ipr_dim) -> (B, 3, H*s, W*s)."""
        ...

    def prior(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """CPEN_S2 + the denoiser steps on the whole (padded) image: -> (B, ipr_dim)."""
        ...

    def restore(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        """DIRformer only, on a padded tile batch with a given IPR."""
        ...

    def prior_run(self, lq: torch.Tensor, noise: torch.Tensor, tile_edge: int) -> PriorRun:
        """`prior` as units of work of about one `tile_edge`² tile's input area each (one unit where
        the backend cannot split it), so a tiled job yields the device between them."""
        ...


class ExportedPrior:
    """The prior of exported graphs: their `prior` graph is one call on the whole image. Given the
    checkpoint's eager model (`windowed`), large priors run exactly, window by window, instead."""

    windowed: Any = None
    prior: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # the exported `prior` graph, from the backend

    @property
    def exact_large_prior(self) -> bool:
        return self.windowed is not None

    def prior_run(self, lq: torch.Tensor, noise: torch.Tensor, tile_edge: int) -> PriorRun:
        if self.windowed is not None:
            return self.windowed.prior_run(lq, noise, tile_edge)
        return OneShotPrior(self.prior, lq, noise)
