"""Building each official preset yields exactly the official state-dict keys, shapes and order."""

from __future__ import annotations

import ast

import pytest
import torch

from models import OFFICIAL_VARIANTS, DiffIRS1, DiffIRS2, get_preset

from .conftest import KEYS


def _listing(name: str) -> list[tuple[str, list[int]]]:
    rows = (KEYS / f"{name}.tsv").read_text().splitlines()[1:]
    return [(key, ast.literal_eval(shape)) for key, shape, _ in (r.split("\t") for r in rows)]


@pytest.mark.parametrize("stage", ["S1", "S2"])
@pytest.mark.parametrize("variant", OFFICIAL_VARIANTS)
def test_keys_and_shapes_match_official_listing(variant: str, stage: str):
    with torch.device("meta"):
        net = (DiffIRS2 if stage == "S2" else DiffIRS1)(get_preset(variant))
    ours = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    assert ours == _listing(f"{variant}-{stage}")


def test_all_sixteen_listings_are_covered():
    listed = {p.stem for p in KEYS.glob("*-S[12].tsv")}
    assert listed == {f"{v}-{s}" for v in OFFICIAL_VARIANTS for s in ("S1", "S2")}


def test_parameter_counts_match_reference():
    # Exact S2 totals of the official networks (their unique parameters; aliases counted once).
    expected = {"inpaint": 26_402_474, "inpaint-big": 49_482_922, "deblur": 26_911_934, "srgan-x4": 24_971_206}
    for name, count in expected.items():
        with torch.device("meta"):
            net = DiffIRS2(get_preset(name))
        assert sum(p.numel() for p in net.parameters()) == count, name
