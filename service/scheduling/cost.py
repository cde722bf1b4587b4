"""What one image really costs the model: the one measure tiling, batching and admission all use.

The model never sees the image as sent: it is padded at the bottom and right to the model's size
multiple (`models.sizing.padded_size`, the multiple from the model's config), and a super-resolution
model produces `scale**2` output pixels per input pixel, which dominate its memory (the upsampling
tail runs at output resolution). So the cost of an h x w input is its padded area times `scale**2`,
in padded output pixels; for deblurring and inpainting (scale 1) that is the padded input area.

Padding is what makes shape matter: a 1 x N strip is padded to 8 x N for a model of multiple 8, eight
times the work of a square of the same pixel count. `shape_refusal` refuses such inputs up front
(when they are big enough for it to matter) instead of letting one strip hold the inference thread
for minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from models.sizing import padded_size

MAX_SHAPE_FACTOR = 1.8
"""The most an input may cost over a square input of the same pixel count (padding waste). Memory
follows the padded area closely (a 4-row strip, padded to 8 rows, measured 2.0x the square's), so the
limit stays under 2x: for a model of multiple 8 it refuses sides of 1 to 4 pixels, while a side of 9
(padded to 16: 1.78x) passes. Time and memory per shape: `bench/results/strip_cost.md`."""
SHAPE_FREE_COST = 256 * 256
"""Inputs that cost at most this (padded output pixels) are accepted in any shape: they are cheap."""


@dataclass(frozen=True)
class Work:
    """The model work of one h x w input for a model of `multiple` and `scale`."""

    height: int
    width: int
    multiple: int
    scale: int = 1

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def padded(self) -> tuple[int, int]:
        return padded_size(self.height, self.width, self.multiple)

    @property
    def cost(self) -> int:
        """Padded output pixels: what tiling thresholds and batch and queue caps count."""
        ph, pw = self.padded
        return ph * pw * self.scale * self.scale

    @property
    def square_cost(self) -> int:
        """The cost of a square input with the same pixel count (its reference)."""
        side = math.isqrt(self.pixels - 1) + 1 if self.pixels else 0
        return Work(side, side, self.multiple, self.scale).cost

    @property
    def shape_factor(self) -> float:
        """How many times a square of the same pixel count this shape costs (1 for squares)."""
        return self.cost / max(self.square_cost, 1)


def shape_refusal(work: Work) -> str | None:
    """Why this input's shape is refused (a message naming the limit), or None when it is accepted."""
    if work.cost <= SHAPE_FREE_COST or work.shape_factor <= MAX_SHAPE_FACTOR:
        return None
    ph, pw = work.padded
    least = math.ceil(work.multiple / MAX_SHAPE_FACTOR)  # the thinnest side whose padding stays in the limit
    return (
        f"a {work.height}x{work.width} input is padded to {ph}x{pw} for this model (multiple {work.multiple}): "
        f"{work.shape_factor:.1f}x the work of a square input of the same pixel count, over the limit of "
        f"{MAX_SHAPE_FACTOR:g}x for inputs costing over {SHAPE_FREE_COST} padded output pixels; "
        f"send at least {least} pixels on its short side"
    )
