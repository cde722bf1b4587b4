"""Large images: one global IPR, DIRformer over overlapping tiles, feathered blend.

Why this is sound for DiffIR: the prior (IPR) is a single 256-d vector for the whole image, so
it is computed once (by the backend, on the whole image) and every tile is restored under the
same prior. The DIRformer itself is local except for its channel ("transposed") attention, whose
statistics are pooled over the tile instead of the image; overlapping tiles blended with linear
ramps hide the small differences that causes, so no seams appear. Memory is bounded by one
tile's activations plus the float32 output and weight accumulators.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.sizing import pad_to_multiple

RestoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TilingCancelled(RuntimeError):
    """The request gave up (deadline, disconnect) while its tiles were being restored."""


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, size) with tiles of `tile`, neighbours overlapping by >= `overlap`."""
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = [0]
    while starts[-1] + tile < size:
        starts.append(min(starts[-1] + step, size - tile))
    return starts


def ramp(length: int, overlap: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    """1-D blend weights: linear ramps of `overlap` samples on the inner sides, 1 elsewhere (never 0)."""
    w = torch.ones(length)
    if overlap <= 0:
        return w
    pos = torch.arange(length, dtype=torch.float32)
    if fade_in:
        w = torch.minimum(w, (pos + 0.5) / overlap)
    if fade_out:
        w = torch.minimum(w, (length - pos - 0.5) / overlap)
    return w


def effective_tile(tile_size: int, multiple: int) -> int:
    """The configured tile edge rounded down to the model's size multiple (at least one multiple)."""
    return max(multiple, tile_size // multiple * multiple)


def restore_tiled(
    lq: torch.Tensor,
    ipr: torch.Tensor,
    restore: RestoreFn,
    *,
    tile_size: int,
    overlap: int,
    multiple: int,
    pad_mode: str,
    scale: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> torch.Tensor:
    """Restore one (1, C, H, W) unpadded input tile by tile under a fixed IPR -> (1, 3, H*s, W*s).

    `should_stop` is checked before every tile, so an abandoned request frees the device within
    one tile's time instead of running to the end.
    """
    _, _, h, w = lq.shape
    tile = effective_tile(tile_size, multiple)
    overlap = min(overlap, tile // 2 - 1) if tile > 2 else 0
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = torch.zeros((1, 3, h * scale, w * scale))
    # The blend weight of tile (i, j) is wy_i(y) * wx_j(x), so the total weight at a pixel is
    # (sum_i wy_i(y)) * (sum_j wx_j(x)): two 1-D sums instead of a full-size weight image.
    row_sum, col_sum = torch.zeros(h * scale), torch.zeros(w * scale)
    for i, top in enumerate(rows):
        th = min(tile, h - top)
        wy = ramp(th * scale, overlap * scale, i > 0, i < len(rows) - 1)
        row_sum[top * scale : (top + th) * scale] += wy
        for j, left in enumerate(cols):
            tw = min(tile, w - left)
            wx = ramp(tw * scale, overlap * scale, j > 0, j < len(cols) - 1)
            if i == 0:
                col_sum[left * scale : (left + tw) * scale] += wx
            if should_stop():
                raise TilingCancelled(f"stopped after {i * len(cols) + j} of {len(rows) * len(cols)} tiles")
            piece, _ = pad_to_multiple(lq[..., top : top + th, left : left + tw], multiple, pad_mode)  # type: ignore[arg-type]
            restored = restore(piece.contiguous(), ipr)[..., : th * scale, : tw * scale]
            ys, xs = slice(top * scale, (top + th) * scale), slice(left * scale, (left + tw) * scale)
            out[..., ys, xs] += restored * (wy[:, None] * wx[None, :])
    for r in range(0, h * scale, 256):  # normalise in row blocks (no full-size temporary)
        out[..., r : r + 256, :] /= row_sum[r : r + 256, None] * col_sum[None, :]
    return out
