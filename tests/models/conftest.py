"""Shared fixtures for the model-core tests: the official reference fixtures (never vendored)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import config_from_official_kwargs

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
FIXTURES = REFERENCE / "fixtures"
KEYS = REFERENCE / "keys"

# fixture folder -> (model kind) ; the scale comes from the fixture's own metadata
FIXTURE_SETS = {
    "deblur-tiny": "deblur",
    "inpaint-tiny": "inpaint",
    "srgan-x2-tiny": "sr",
    "srgan-x4-tiny": "sr",
    "realsr-x1-tiny": "sr",
}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative max error: max |a - e| / max |e|."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


class FixtureSet:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = FIXTURES / name
        self.data = torch.load(self.dir / "fixtures.pt", weights_only=True)
        meta = self.data["meta"]
        kind = FIXTURE_SETS[name]
        self.s2_config = config_from_official_kwargs(name, kind, meta["s2_kwargs"], scale=meta["scale"])
        self.s1_config = config_from_official_kwargs(name, kind, meta["s1_kwargs"], scale=meta["scale"])


@pytest.fixture(scope="session", params=sorted(FIXTURE_SETS))
def fixture_set(request: pytest.FixtureRequest) -> FixtureSet:
    return FixtureSet(request.param)
