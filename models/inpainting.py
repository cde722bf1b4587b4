"""Inpainting input and output conventions (official predictor): 1 = hole in the mask."""

from __future__ import annotations

import torch


def binarize_mask(mask: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """The official predictor treats any non-zero mask value as hole: `mask > 0`."""
    return (mask > threshold).to(torch.float32)


def network_input(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The 4-channel input: RGB zeroed inside the hole, then the mask."""
    return torch.cat([image * (1 - mask), mask], dim=1)


def composite(image: torch.Tensor, mask: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Keep known pixels, take the prediction inside the hole."""
    return mask * prediction + (1 - mask) * image
