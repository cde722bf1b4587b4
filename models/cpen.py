"""CPEN: the compact IR prior extraction network (LQ [+ GT] -> 256-d IPR)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig
from models.layers import SampleConv2d, SampleLinear
from models.sizing import tile_shape

LRELU_SLOPE = 0.1


class ResBlock(nn.Module):
    """conv -> LReLU -> conv plus identity, no activation after the sum (keys `body.0`, `body.2`)."""

    def __init__(self, feats: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            SampleConv2d(feats, feats, 3, padding=1),
            nn.LeakyReLU(LRELU_SLOPE),
            SampleConv2d(feats, feats, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CPEN(nn.Module):
    """Convolutional trunk `E`, global average pool, then the 2-layer `mlp`."""

    def __init__(self, in_channels: int, n_resblocks: int, n_feats: int = 64) -> None:
        super().__init__()
        lrelu = nn.LeakyReLU(LRELU_SLOPE)
        self.E = nn.Sequential(
            SampleConv2d(in_channels, n_feats, 3, padding=1),
            lrelu,
            *[ResBlock(n_feats) for _ in range(n_resblocks)],
            SampleConv2d(n_feats, 2 * n_feats, 3, padding=1),
            lrelu,
            SampleConv2d(2 * n_feats, 2 * n_feats, 3, padding=1),
            lrelu,
            SampleConv2d(2 * n_feats, 4 * n_feats, 3, padding=1),
            lrelu,
        )
        self.mlp = nn.Sequential(
            SampleLinear(4 * n_feats, 4 * n_feats),
            lrelu,
            SampleLinear(4 * n_feats, 4 * n_feats),
            lrelu,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.E(x.contiguous(memory_format=torch.channels_last))
        return self.mlp(feat.mean(dim=(2, 3)))

    def halo(self) -> int:
        """Receptive-field radius of the trunk: how far a window must reach past its core."""
        convs = [m for m in self.E.modules() if isinstance(m, nn.Conv2d)]
        return sum((m.kernel_size[0] - 1) // 2 * m.dilation[0] for m in convs)

    def window_sum(self, x: torch.Tensor, box: tuple[int, int, int, int], halo: int) -> torch.Tensor:
        """Sum over the core `box` = (top, left, bottom, right) of the trunk's features (B, C), float32.

        The trunk is a stack of 3x3 convolutions, so the window read with a `halo`-wide margin and
        cropped back to its core gives the features the whole image would have there; the cores'
        sums over the pixel count are the exact global average pool (`models.diffir.WindowedPrior`)."""
        top, left, bottom, right = box
        h, w = x.shape[-2:]
        t0, l0 = max(top - halo, 0), max(left - halo, 0)
        part = x[..., t0 : min(bottom + halo, h), l0 : min(right + halo, w)]
        feat = self.E(part.contiguous(memory_format=torch.channels_last))
        return feat[..., top - t0 : bottom - t0, left - l0 : right - l0].float().sum(dim=(2, 3))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """The MLP on the globally pooled trunk features."""
        return self.mlp(pooled)


def window_boxes(h: int, w: int, window: int) -> list[tuple[int, int, int, int]]:
    """Non-overlapping (top, left, bottom, right) cores of about `window`² area covering an h x w map
    (square, or along a strip's long side: `models.sizing.tile_shape`)."""
    rows, cols = tile_shape(h, w, window)
    return [
        (top, left, min(top + rows, h), min(left + cols, w)) for top in range(0, h, rows) for left in range(0, w, cols)
    ]


def _unshuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.pixel_unshuffle(x, factor) if factor > 1 else x


def cpen_s2_input(config: ModelConfig, lq: torch.Tensor) -> torch.Tensor:
    """CPEN_S2 sees only the degraded input, unshuffled to 1/4 of the output resolution."""
    return _unshuffle(lq, config.cpen_s2_unshuffle)


def cpen_s1_input(config: ModelConfig, lq: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """CPEN_S1 sees [degraded, ground truth], both at 1/4 of the output resolution."""
    return torch.cat([cpen_s2_input(config, lq), F.pixel_unshuffle(gt, 4)], dim=1)
