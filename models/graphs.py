"""The exported graphs: explicit-noise wrappers around a stage-2 network.

* `FullGraph`     (lq, noise) -> image           the whole restoration in one call
* `PriorGraph`    (lq, noise) -> ipr (B x 256)   CPEN_S2 + 4 denoiser steps
* `RestorerGraph` (lq, ipr)   -> image           DIRformer only

Splitting prior and restorer lets a large image be restored in tiles with one global IPR
computed on the whole (or a downscaled) image. Inputs must already be padded to
`config.size_multiple`; `models.sizing` does that outside the graph.
"""

from __future__ import annotations

import torch
from torch import nn

from models.diffir import DiffIRS2


class FullGraph(nn.Module):
    def __init__(self, net: DiffIRS2) -> None:
        super().__init__()
        self.net = net

    def forward(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net(lq, noise=noise)


class PriorGraph(nn.Module):
    def __init__(self, net: DiffIRS2) -> None:
        super().__init__()
        self.net = net

    def forward(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net.prior(lq, noise)


class RestorerGraph(nn.Module):
    def __init__(self, net: DiffIRS2) -> None:
        super().__init__()
        self.net = net

    def forward(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        return self.net.restore(lq, ipr)


GRAPHS = {
    "full": (FullGraph, ("lq", "noise"), "image"),
    "prior": (PriorGraph, ("lq", "noise"), "ipr"),
    "restorer": (RestorerGraph, ("lq", "ipr"), "image"),
}
