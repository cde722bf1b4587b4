"""Every task family trains stage 1 and stage 2 from one CLI command each; optional loss terms run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.__main__ import main
from training.losses import VGG19_CFG, PerceptualLoss, maybe_perceptual

TINY_FLAGS = ["--model-dim", "8", "--model-blocks", "1,1,1,1", "--model-heads", "1,1,2,2", "--model-cpen-blocks",
              "1", "--model-cpen-feats", "8", "--steps", "2", "--workers", "0", "--threads", "1", "--log-every", "1",
              "--progress", "false"]  # fmt: skip

FAMILIES = {
    "deblur": ["--task", "deblur", "--patches", "32", "--batches", "2"],
    "sr": ["--task", "sr-x4", "--patches", "32", "--batches", "2"],
    "realsr": ["--task", "sr-x4", "--degradation", "realesrgan", "--patches", "32", "--batches", "2"],
    "inpaint": ["--task", "inpaint", "--patches", "32", "--batches", "2"],
}


def _validator(args: list[str]):
    """The run's own validation set (the same crops and degradations), and the model's scale."""
    import argparse

    from training.config import add_arguments, config_from_args
    from training.loop import build_degradation
    from training.validate import Validator

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(args), 1)
    return Validator(cfg, build_degradation(cfg)), cfg.model_config().scale


def baseline_psnrs(args: list[str]) -> dict[str, float]:
    """PSNR on the very validation crops the run scores: of a uniform-noise output and of the degraded
    input itself (bicubic-upscaled for SR; known pixels kept for inpainting, as validation does)."""
    import torch.nn.functional as F

    from models.inpainting import composite
    from training.metrics import psnr

    validator, scale = _validator(args)
    scores: dict[str, list[float]] = {"noise": [], "input": []}
    for i, (_, lq, gt, mask) in enumerate(validator.items):
        noise = torch.rand(gt.shape, generator=torch.Generator().manual_seed(i))
        up = F.interpolate(lq[None, :3], scale_factor=scale, mode="bicubic")[0].clamp(0, 1) if scale > 1 else lq[:3]
        for name, out in (("noise", noise), ("input", up)):
            scores[name].append(psnr(out if mask is None else composite(gt, mask, out), gt, border=scale))
    return {name: sum(v) / len(v) for name, v in scores.items()}


def rescored(args: list[str], run: Path, step: int) -> tuple[float, float]:
    """The saved validation output of the (one) validation image, scored here against its ground-truth
    crop and against that crop mirrored left to right: (right, mirrored)."""
    from training.imageio import read_image
    from training.metrics import psnr

    validator, scale = _validator(args)
    ((name, _, gt, _),) = validator.items
    out = read_image(run / "val" / f"{step:07d}" / f"{name}_out.png")
    return psnr(out, gt, border=scale), psnr(out, gt.flip(-1), border=scale)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_both_stages_from_the_cli(family, tmp_path, image_dir):
    args = [*FAMILIES[family], "--data", str(image_dir), "--out", str(tmp_path), "--val", str(image_dir),
            "--val-images", "1", "--val-every", "2", "--val-crop", "32", *TINY_FLAGS]  # fmt: skip
    assert main(["stage1", *args]) == 0
    assert main(["stage2", *args]) == 0
    base = baseline_psnrs(args)
    for stage in (1, 2):
        rows = [json.loads(x) for x in (tmp_path / f"s{stage}" / "log.jsonl").read_text().splitlines()]
        assert rows[-1]["step"] == 2 and "val_psnr" in rows[-1]
        # measured: 5-10 dB above a noise output on the same crops (noise scores 8-13 dB); a misaligned,
        # wrongly scaled or garbage output is not
        assert rows[-1]["val_psnr"] > base["noise"] + 4, (rows[-1]["val_psnr"], base)
        # ...and it is the PSNR against the right ground truth: the saved output (8-bit) re-scored here gives
        # it to 0.05 dB, while against a mirrored crop it scores >= 0.5 dB less (measured 0.8-7 dB less; the
        # smooth synthetic scenes are nearly symmetric, which is why the bar above cannot tell the two apart)
        right, mirrored = rescored(args, tmp_path / f"s{stage}", 2)
        assert abs(rows[-1]["val_psnr"] - right) < 0.05 and right - mirrored >= 0.5, (rows[-1], right, mirrored)
        if family == "deblur":  # global residual from a near-identity init: two steps stay at the input's PSNR
            assert abs(rows[-1]["val_psnr"] - base["input"]) < 0.5, (rows[-1]["val_psnr"], base)
        assert (tmp_path / f"s{stage}" / "model_latest.safetensors").is_file()
    assert list((tmp_path / "s2" / "val").rglob("*_out.png"))
    meta = json.loads((tmp_path / "s2" / "model_latest.json").read_text())
    assert meta["provenance"]["family"] == family and meta["stage"] == "s2"


@pytest.mark.parametrize("task", ["sr-x4", "inpaint"])
def test_gan_terms_train_the_official_discriminators(task, tmp_path, image_dir):
    args = ["--task", task, "--data", str(image_dir), "--out", str(tmp_path), "--patches", "32", "--batches", "2",
            "--gan-weight", "0.1", "--fm-weight", "1", *TINY_FLAGS]  # fmt: skip
    assert main(["stage1", *args]) == 0
    rows = [json.loads(x) for x in (tmp_path / "s1" / "log.jsonl").read_text().splitlines()]
    assert all("g" in r and "d" in r for r in rows)
    state = torch.load(tmp_path / "s1" / "state.pt", weights_only=True)
    assert "disc" in state and "opt_d" in state


def test_perceptual_loss_needs_a_local_file(tmp_path, capsys):
    assert maybe_perceptual("") is None
    assert "nothing is downloaded" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError):
        maybe_perceptual(str(tmp_path / "missing.pth"))
    # a torchvision-layout state dict (random weights) loads strictly and gives a differentiable loss
    sd, idx, ch = {}, 0, 3
    for v in VGG19_CFG:
        if v == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = torch.randn(v, ch, 3, 3) * 0.05
        sd[f"features.{idx}.bias"] = torch.zeros(v)
        idx, ch = idx + 2, v
    torch.save(sd, tmp_path / "vgg19.pth")
    loss = PerceptualLoss(tmp_path / "vgg19.pth")
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    value = loss(x, torch.rand(1, 3, 32, 32))
    value.backward()
    assert value.item() > 0 and x.grad is not None


def test_unknown_command_prints_usage(capsys):
    assert main(["train"]) == 2
    assert "stage1" in capsys.readouterr().err
