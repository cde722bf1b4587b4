"""Large images: one global IPR, DIRformer over overlapping tiles, feathered blend.

Why this is sound for DiffIR: the prior (IPR) is a single 256-d vector for the whole image, so
it is computed once (by the backend, on the whole image, in window-sized units where it can) and
every tile is restored under the same prior. The DIRformer itself is local except for its
channel ("transposed") attention, whose statistics are pooled over the tile instead of the
image; overlapping tiles blended with linear ramps hide the small differences that causes, so
no seams appear. Memory is bounded by one tile's activations plus the float32 output and weight accumulators.
A strip thinner than a tile is cut along its long side into pieces of a square tile's area
(`models.sizing.tile_shape`), so its tiles cost what a square image's do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from models.sizing import pad_to_multiple, tile_shape

RestoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TilingCancelled(RuntimeError):
    """The request gave up (deadline, disconnect) while its tiles were being restored."""


class PriorRun(Protocol):
    """The whole image's IPR, computed in `units` calls of `step()` (True while more remain)."""

    @property
    def units(self) -> int: ...

    def step(self) -> bool: ...

    @property
    def ipr(self) -> torch.Tensor: ...


class OneShotPrior:
    """A prior that is one unit of work: a backend's whole-image `prior` call (an exported graph)."""

    units = 1

    def __init__(self, prior: RestoreFn, lq: torch.Tensor, noise: torch.Tensor) -> None:
        self._call: Callable[[], torch.Tensor] | None = lambda: prior(lq, noise)
        self._ipr: torch.Tensor | None = None

    def step(self) -> bool:
        if self._call is not None:
            self._ipr, self._call = self._call(), None
        return False

    @property
    def ipr(self) -> torch.Tensor:
        if self._ipr is None:
            raise RuntimeError("the prior has not been computed")
        return self._ipr


class KnownPrior:
    """An IPR the caller already has: no units of work."""

    units = 0

    def __init__(self, ipr: torch.Tensor) -> None:
        self.ipr = ipr

    def step(self) -> bool:
        return False


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


@dataclass(frozen=True)
class TileGeometry:
    tile: int
    overlap: int
    multiple: int
    pad_mode: str
    scale: int


class TiledRestoration:
    """One large image restored one unit per `step()` (first the prior's units, then one tile each),
    so callers can interleave other work and a small request never waits behind more than one unit.

    The blend weight of tile (i, j) is wy_i(y) * wx_j(x), so the total weight at a pixel is
    (sum_i wy_i(y)) * (sum_j wx_j(x)): two 1-D sums instead of a full-size weight image.
    """

    def __init__(self, lq: torch.Tensor, prior: PriorRun, restore: RestoreFn, geometry: TileGeometry) -> None:
        _, _, h, w = lq.shape
        self.lq, self.prior, self.restore, self.g = lq, prior, restore, geometry
        s = geometry.scale
        self.tile_rows, self.tile_cols = tile_shape(h, w, geometry.tile, geometry.multiple)  # strips: long pieces
        self.rows = tile_starts(h, self.tile_rows, geometry.overlap)
        self.cols = tile_starts(w, self.tile_cols, geometry.overlap)
        self.out = torch.zeros((1, 3, h * s, w * s))
        self.row_sum, self.col_sum = torch.zeros(h * s), torch.zeros(w * s)
        for i, top in enumerate(self.rows):
            self.row_sum[top * s : (top + self._extent(i, True)) * s] += self._ramp(i, True)
        for j, left in enumerate(self.cols):
            self.col_sum[left * s : (left + self._extent(j, False)) * s] += self._ramp(j, False)
        self.done = 0

    @property
    def tiles(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def total(self) -> int:
        """Units of work: the prior's, then one per tile."""
        return self.prior.units + self.tiles

    def _extent(self, index: int, vertical: bool) -> int:
        starts, size = (self.rows, self.lq.shape[-2]) if vertical else (self.cols, self.lq.shape[-1])
        return min(self.tile_rows if vertical else self.tile_cols, size - starts[index])

    def _ramp(self, index: int, vertical: bool) -> torch.Tensor:
        count = len(self.rows if vertical else self.cols)
        length = self._extent(index, vertical) * self.g.scale
        return ramp(length, self.g.overlap * self.g.scale, index > 0, index < count - 1)

    def step(self) -> bool:
        """Run the next unit (a piece of the prior, else a tile); returns True while units remain."""
        if self.done < self.prior.units:
            self.prior.step()
            self.done += 1
            return True
        i, j = divmod(self.done - self.prior.units, len(self.cols))
        top, left, s = self.rows[i], self.cols[j], self.g.scale
        th, tw = self._extent(i, True), self._extent(j, False)
        window = self.lq[..., top : top + th, left : left + tw]
        piece, _ = pad_to_multiple(window, self.g.multiple, self.g.pad_mode)  # type: ignore[arg-type]
        restored = self.restore(piece.contiguous(), self.prior.ipr)[..., : th * s, : tw * s]
        blend = self._ramp(i, True)[:, None] * self._ramp(j, False)[None, :]
        self.out[..., top * s : (top + th) * s, left * s : (left + tw) * s] += restored * blend
        self.done += 1
        return self.done < self.total

    def result(self) -> torch.Tensor:
        """Normalise (in row blocks: no full-size temporary) and return (1, 3, H*s, W*s)."""
        for r in range(0, self.out.shape[-2], 256):
            self.out[..., r : r + 256, :] /= self.row_sum[r : r + 256, None] * self.col_sum[None, :]
        return self.out


def geometry(tile_size: int, overlap: int, multiple: int, pad_mode: str, scale: int) -> TileGeometry:
    tile = effective_tile(tile_size, multiple)
    return TileGeometry(tile, min(overlap, tile // 2 - 1) if tile > 2 else 0, multiple, pad_mode, scale)


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
    run = TiledRestoration(lq, KnownPrior(ipr), restore, geometry(tile_size, overlap, multiple, pad_mode, scale))
    more = True
    while more:
        if should_stop():
            raise TilingCancelled(f"stopped after {run.done} of {run.total} tiles")
        more = run.step()
    return run.result()
