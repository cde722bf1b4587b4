"""`python -m bench.tile_size`: tiled restoration per tile edge, quality against the untiled pass and speed."""

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
    """The layout `training.evaluate` reads: Kodak24, Levin kernels, GoPro pairs; hole masks, faces, Places2."""
    _photo(root / "val" / "Kodak24" / "kodim01.png", 80, 96, 1)
    kernels = root / "tasks" / "deblur" / "kernels"
    kernels.mkdir(parents=True)
    np.save(kernels / "k1.npy", np.ones((3, 5)) / 15)
    _photo(root / "tasks" / "deblur" / "gopro" / "A_blur1.png", 72, 88, 2)
    _photo(root / "tasks" / "deblur" / "gopro" / "A_sharp1.png", 72, 88, 3)
    inpaint = root / "tasks" / "inpaint"
    for name in ("masks", "faces/celebahq256", "faces/ffhq256"):
        (inpaint / name).mkdir(parents=True)
    hole = np.zeros((256, 256), np.uint8)
    hole[100:140, 90:180] = 255
    Image.fromarray(hole).save(inpaint / "masks" / "hole.png")
    _photo(inpaint / "faces" / "ffhq256" / "face.png", 256, 256, 4)  # not a Places2 image: left out
    _photo(inpaint / "places2" / "A_raw.png", 80, 96, 5)
    Image.fromarray(hole[90:170, 80:176]).save(inpaint / "places2" / "A_mask.png")  # a hole across tile borders
    return root


def test_every_edge_is_measured_and_a_tile_covering_the_image_is_the_untiled_pass(tmp_path):
    ckpt = _checkpoint(tmp_path, "deblur")
    data, out = _data(tmp_path / "data"), tmp_path / "out"
    args = ["--tiles", "32", "128", "--reps", "2", "--side", "64", "--threads", "1", "--data", str(data)]
    assert main([ckpt, *args, "--out", str(out)]) == 0
    result = json.loads((out / "tile_size-deblur-fp32.json").read_text())
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
    table = (out / "tile_size-deblur-fp32.md").read_text()
    assert "| untiled |" in table and "| 32 |" in table and "64² min s" in table


def test_inpainting_is_measured_on_places2_with_its_holes_and_not_timed(tmp_path):
    ckpt = _checkpoint(tmp_path, "inpaint", hole_fill="smooth", fill_biharmonic_iterations=0)
    data, out = _data(tmp_path / "data"), tmp_path / "out"
    assert main([ckpt, "--tiles", "32", "--threads", "1", "--data", str(data), "--out", str(out)]) == 0
    result = json.loads((out / "tile_size-inpaint-fp32.json").read_text())
    assert [(r["set"], r["name"]) for r in result["rows"]] == [("places2", "A")]
    assert np.isfinite(result["rows"][0]["vs_untiled_32"]) and result["times"] == {}
    assert "min_s" not in result["table"][1]
    table = (out / "tile_size-inpaint-fp32.md").read_text()
    assert "Places2" in table and "min s" not in table and "| 32 |" in table


def test_refuses_a_checkpoint_of_another_task(tmp_path):
    ckpt = _checkpoint(tmp_path, "sr", scale=4)
    with pytest.raises(SystemExit, match="deblurring or an inpainting checkpoint"):
        main([ckpt, "--data", str(tmp_path), "--out", str(tmp_path)])
