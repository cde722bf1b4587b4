"""Metrics, the evaluation command and export parity of a freshly trained checkpoint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from models.inpainting import smooth_fill
from training.evaluate import Case, baselines, face_masks
from training.evaluate import main as evaluate_main
from training.metrics import psnr, ssim
from training.run import run_stage

from .conftest import tiny_config


def test_psnr_and_ssim_reference_values():
    gt = torch.full((3, 32, 32), 100 / 255)
    assert math.isinf(psnr(gt, gt)) and ssim(gt, gt) == pytest.approx(1.0)
    out = gt + 10 / 255
    assert psnr(out, gt) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-6)
    # border crop ignores the frame; Y channel weights green most
    framed = gt.clone()
    framed[:, :4] = 0
    assert math.isinf(psnr(framed, gt, border=4))
    g = gt.clone()
    g[1] += 10 / 255
    r = gt.clone()
    r[0] += 10 / 255
    assert psnr(g, gt, y_channel=True) < psnr(r, gt, y_channel=True)
    noisy = (gt + 0.1 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert 0 < ssim(noisy, gt) < 0.9


def test_face_masks_follow_each_sources_polarity(eval_data):
    masks = face_masks(eval_data("masks"))
    assert len(masks) == 17  # 15 edge-connect (white = hole) + 2 DDNM keep-masks, inverted
    assert all(0.02 < m.mean() < 0.6 for m in masks)  # holes, never "everything but a hole"


@pytest.fixture(scope="module")
def tiny_s2(tmp_path_factory, image_dir):
    tmp = tmp_path_factory.mktemp("tiny_s2")
    cfg = tiny_config(tmp, image_dir, steps=2)
    run_stage(cfg)
    run_stage(tiny_config(tmp, image_dir, steps=2, stage=2))
    return tmp / "s2" / "model_latest.safetensors"


def test_evaluate_folder_reports_model_and_baseline(tiny_s2, image_dir, tmp_path):
    rc = evaluate_main(["--task", "sr-x4", "--checkpoint", str(tiny_s2), "--folder", str(image_dir),
                        "--out", str(tmp_path), "--save-images"])  # fmt: skip
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    mean = res["means"][image_dir.name]
    assert mean["n"] == 3 and set(mean) == {"model", "bicubic", "n"}
    assert "| set | n |" in (tmp_path / "results.md").read_text()
    assert len(list((tmp_path / "images").rglob("*.png"))) == 6
    # the reported means, recomputed here from the saved 8-bit images and the ground truth (BT.601 Y,
    # 4-pixel border, numpy): the numbers are the images' numbers
    gts = {p.stem: np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in image_dir.glob("*.png")}
    noise_rng = np.random.default_rng(0)
    for method in ("model", "bicubic"):
        saved = sorted((tmp_path / "images" / image_dir.name).glob(f"*_{method}.png"))
        assert len(saved) == 3
        ours = [_y_psnr(np.asarray(Image.open(p), dtype=np.float64), gts[p.stem.rsplit("_", 1)[0]], 4) for p in saved]
        assert mean[method]["psnr"] == pytest.approx(float(np.mean(ours)), abs=1e-6), method
    noise = [_y_psnr(noise_rng.integers(0, 256, gt.shape).astype(np.float64), gt, 4) for gt in gts.values()]
    # a two-step model is no restorer, but its output is an image of this scene: far above noise (~8 dB)
    assert mean["model"]["psnr"] > float(np.mean(noise)) + 4, (mean, float(np.mean(noise)))


def _y_psnr(out: np.ndarray, gt: np.ndarray, border: int) -> float:
    """PSNR on BT.601 luma (16-235) of 8-bit RGB arrays, `border` pixels cropped (BasicSR's SR protocol)."""

    def luma(x: np.ndarray) -> np.ndarray:
        return (16.0 + x @ np.array([65.481, 128.553, 24.966]) / 255)[border:-border, border:-border]

    return 10 * math.log10(255.0**2 / float(np.mean((luma(out) - luma(gt)) ** 2)))


def test_export_of_a_freshly_trained_checkpoint_passes_parity(tiny_s2, tmp_path):
    from training.export import ExportOptions, export

    report = export(tiny_s2, tmp_path, options=ExportOptions(graphs=("full",), formats=("onnx",)))
    assert report["artifacts"] and all(a["ok"] for a in report["artifacts"].values())


def test_inpainting_baselines_include_the_pre_fill_alone():
    """The pre-fill column shows what the network adds; it must keep known pixels and fill a smooth
    image far better than the zero-filled input."""
    gt = torch.linspace(0.2, 0.8, 64).expand(3, 48, 64).clone()
    m = torch.zeros(1, 48, 64)
    m[:, 10:30, 20:44] = 1
    case = Case("synthetic", "ramp", gt * (1 - m), gt, m)
    methods = baselines("inpaint", 1)
    assert set(methods) == {"telea", "biharmonic", "pre-fill alone"}
    fill = methods["pre-fill alone"](case)
    assert torch.equal(fill * (1 - m), gt * (1 - m))
    assert psnr(fill, gt) > psnr(case.lq, gt) + 20


def test_pre_fill_baseline_is_the_evaluated_models_fill():
    """A model trained on a longer biharmonic solve is compared with that fill, not the default one."""
    g = torch.Generator().manual_seed(3)
    gt = torch.rand(3, 40, 40, generator=g)
    m = torch.zeros(1, 40, 40)
    m[:, 8:32, 12:30] = 1
    case = Case("synthetic", "noise", gt * (1 - m), gt, m)
    short = baselines("inpaint", 1, fill_iterations=0)["pre-fill alone"](case)
    long = baselines("inpaint", 1, fill_iterations=300)["pre-fill alone"](case)
    assert torch.equal(long, smooth_fill(case.lq[None], m[None], 300)[0].clamp(0, 1))
    assert (long - short).abs().max() > 1e-3
