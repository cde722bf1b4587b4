"""`python -m bench.compare_speed`: two checkpoints of one task timed in one process."""

from __future__ import annotations

import json

import pytest
import torch

from bench.compare_speed import main
from models import CPENConfig, DiffIRS2, DIRformerConfig, ModelConfig, save_checkpoint

TINY_G = DIRformerConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0)


def _checkpoint(tmp_path, name: str, kind: str, **extra):
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, kind=kind, dirformer=TINY_G, cpen=CPENConfig(n_resblocks=1), **extra)
    return str(save_checkpoint(DiffIRS2(cfg), tmp_path / name))


def test_times_both_checkpoints_at_every_size(tmp_path):
    short = _checkpoint(tmp_path, "short", "inpaint", hole_fill="smooth", fill_biharmonic_iterations=0)
    long = _checkpoint(tmp_path, "long", "inpaint", hole_fill="smooth", fill_biharmonic_iterations=50)
    assert main([short, long, "--sizes", "32", "48", "--reps", "2", "--threads", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "compare_speed.json").read_text())["rows"]
    assert [(r["checkpoint"], r["side"]) for r in rows] == [(short, 32), (long, 32), (short, 48), (long, 48)]
    assert all(0 < r["min_s"] <= r["median_s"] for r in rows)
    table = (tmp_path / "compare_speed.md").read_text()
    assert f"| {long} | 48² |" in table


def test_refuses_checkpoints_of_different_tasks(tmp_path):
    a, b = _checkpoint(tmp_path, "a", "deblur"), _checkpoint(tmp_path, "b", "inpaint")
    with pytest.raises(SystemExit, match="different tasks"):
        main([a, b, "--sizes", "32", "--reps", "1", "--threads", "1", "--out", str(tmp_path)])
