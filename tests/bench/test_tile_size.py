"""`python -m bench.tile_size`: tiled deblurring per tile edge, quality against the untiled pass and speed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bench.tile_size import main
from models import CPENConfig, DiffIRS2, DIRformerConfig, ModelConfig, save_checkpoint

TINY_G = DIRformerConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0)


def _checkpoint(tmp_path, kind: str, **extra) -> str:
    torch.manual_seed(0)
    cfg = ModelConfig(name=kind, kind=kind, dirformer=TINY_G, cpen=CPENConfig(n_resblocks=1), **extra)
    return str(save_checkpoint(DiffIRS2(cfg), tmp_path / kind))


def _photo(path, h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)).save(path)


def _data(root):
    """The layout `training.evaluate.deblur_cases` reads: Kodak24, Levin kernels, GoPro pairs."""
    _photo(root / "val" / "Kodak24" / "kodim01.png", 80, 96, 1)
    kernels = root / "tasks" / "deblur" / "kernels"
    kernels.mkdir(parents=True)
    np.save(kernels / "k1.npy", np.ones((3, 5)) / 15)
    _photo(root / "tasks" / "deblur" / "gopro" / "A_blur1.png", 72, 88, 2)
    _photo(root / "tasks" / "deblur" / "gopro" / "A_sharp1.png", 72, 88, 3)
    return root


def test_every_edge_is_measured_and_a_tile_covering_the_image_is_the_untiled_pass(tmp_path):
    ckpt = _checkpoint(tmp_path, "deblur")
    data, out = _data(tmp_path / "data"), tmp_path / "out"
    args = ["--tiles", "32", "128", "--reps", "2", "--side", "64", "--threads", "1", "--data", str(data)]
    assert main([ckpt, *args, "--out", str(out)]) == 0
    result = json.loads((out / "tile_size-fp32.json").read_text())
    assert [e["tile"] for e in result["table"]] == [0, 32, 128]
    assert result["images"] == 2 and [r["set"] for r in result["rows"]] == ["Kodak24", "GoPro"]
    small, whole = result["table"][1], result["table"][2]
    # 32 px tiles (overlap clipped to 15) split both images: the output differs from the untiled pass
    assert all(np.isfinite(r["vs_untiled_32"]) for r in result["rows"])
    # one 128 px tile holds each image: forced tiling with the whole image's prior is the untiled pass
    assert all(r["vs_untiled_128"] == "inf" for r in result["rows"]), result["rows"]
    assert whole["gain_vs_untiled"] == 0 and whole["worst_gain_vs_untiled"] == 0
    gains = [r["psnr_32"] - r["psnr_0"] for r in result["rows"]]
    assert small["gain_vs_untiled"] == pytest.approx(np.mean(gains)) and small["worst_gain_vs_untiled"] == min(gains)
    assert all(0 < e["min_s"] <= e["median_s"] for e in result["table"][1:])
    table = (out / "tile_size-fp32.md").read_text()
    assert "| untiled |" in table and "| 32 |" in table and "64² min s" in table


def test_refuses_a_checkpoint_of_another_task(tmp_path):
    ckpt = _checkpoint(tmp_path, "sr", scale=4)
    with pytest.raises(SystemExit, match="deblurring checkpoint"):
        main([ckpt, "--data", str(tmp_path), "--out", str(tmp_path)])
