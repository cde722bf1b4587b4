"""Pad any image to the multiple a variant needs, and crop the output back.

Padding is done with index arithmetic rather than `F.pad`, so it works for every size, even
when the pad is larger than the image (a 1x1 input), where torch's "reflect" refuses.
"""

from __future__ import annotations

from typing import Literal

import torch

PadMode = Literal["reflect", "symmetric", "replicate"]


def _source_index(size: int, total: int, mode: PadMode, device: torch.device) -> torch.Tensor:
    i = torch.arange(total, device=device)
    if mode == "replicate" or size == 1:
        return i.clamp_max(size - 1)
    if mode == "reflect":  # mirror without repeating the edge: a b c | b a
        period = 2 * (size - 1)
        j = i % period
        return torch.where(j < size, j, period - j)
    # symmetric (numpy): mirror repeating the edge: a b c | c b a
    period = 2 * size
    j = i % period
    return torch.where(j < size, j, period - 1 - j)


def pad_bottom_right(x: torch.Tensor, height: int, width: int, mode: PadMode) -> torch.Tensor:
    """Extend (B, C, H, W) to (B, C, height, width) at the bottom and right."""
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    rows = _source_index(h, height, mode, x.device)
    cols = _source_index(w, width, mode, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def padded_size(h: int, w: int, multiple: int) -> tuple[int, int]:
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: PadMode) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W up to multiples of `multiple`; returns the padded tensor and the original size."""
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, w, multiple)
    return pad_bottom_right(x, ph, pw, mode), (h, w)


def crop_output(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return y[..., :height, :width]


def tile_shape(h: int, w: int, edge: int, multiple: int = 1) -> tuple[int, int]:
    """(rows, cols) of the tiles (or windows) that cut an h x w map into pieces of about `edge`² area.

    `edge` x `edge`, except for a strip: along a side shorter than `edge` the piece spans the whole
    side and grows along the long one to the same area (counting the short side padded to
    `multiple`), so a 8 x 100000 strip is cut into a few 8 x 18432 pieces, not hundreds of 8 x 384
    slivers that each pay a call's fixed cost.
    """
    if h < edge < w:
        short = padded_size(h, 1, multiple)[0]
        return edge, max(edge, edge * edge // short // multiple * multiple)
    if w < edge < h:
        short = padded_size(1, w, multiple)[1]
        return max(edge, edge * edge // short // multiple * multiple), edge
    return edge, edge
