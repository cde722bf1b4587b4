"""Training precision (fp32 | bf16 | fp16) and the teacher-free stage-2 continuation of a shipped-style model."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from models import load_model
from training.config import add_arguments, autocast_dtype, config_from_args
from training.run import run_stage

from .conftest import tiny_config


def _parse(argv: list[str], stage: int = 2):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv), stage)


def test_precision_maps_to_autocast_dtypes_and_rejects_fp16_on_the_cpu(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path)
    assert autocast_dtype(cfg, "cpu") is None
    assert autocast_dtype(dataclasses.replace(cfg, precision="bf16"), "cpu") == torch.bfloat16
    assert autocast_dtype(dataclasses.replace(cfg, amp=True), "cuda") == torch.float16  # the legacy switch
    assert autocast_dtype(dataclasses.replace(cfg, amp=True), "cpu") is None
    with pytest.raises(ValueError, match="CUDA"):
        autocast_dtype(dataclasses.replace(cfg, precision="fp16"), "cpu")
    with pytest.raises(ValueError, match="precision"):
        _parse(["--task", "deblur", "--precision", "fp8"])


def test_teacher_free_needs_a_student_and_no_warm_up():
    with pytest.raises(ValueError, match="init_student"):
        _parse(["--task", "deblur", "--teacher", "false", "--encoder-frac", "0"])
    with pytest.raises(ValueError, match="encoder_frac"):
        _parse(["--task", "deblur", "--teacher", "false", "--init-student", "x.safetensors", "--encoder-frac", "0.2"])


def test_teacher_free_bf16_continuation_trains_the_student(tmp_path, image_dir):
    """A stage-2 network continued without its stage-1 teacher, under bf16 autocast (its layers compute in
    bfloat16, seen by a forward hook): the weights move, the losses are finite, and the checkpoint is the
    same architecture."""
    run_stage(tiny_config(tmp_path / "base", image_dir, steps=2))
    run_stage(tiny_config(tmp_path / "base", image_dir, steps=2, stage=2))
    student = tmp_path / "base" / "s2" / "model_latest.safetensors"
    cfg = tiny_config(tmp_path / "cont", image_dir, steps=3, stage=2, teacher=False, init_student=str(student),
                      precision="bf16", ema=0.0, lr=1e-3)  # fmt: skip
    trained: set[torch.dtype] = set()  # output dtypes of the convolutions and linear layers in training forwards

    def record(module: torch.nn.Module, args: object, output: object) -> None:
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear) and torch.is_grad_enabled():
            trained.add(output.dtype)  # type: ignore[union-attr]

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        out = run_stage(cfg)
    finally:
        hook.remove()
    assert torch.bfloat16 in trained, trained  # autocast really ran: with a no-op in its place, all are float32
    before, after = load_model(student), load_model(out)
    assert after.config == before.config
    moved = [not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values())]
    assert any(moved)
    log = (tmp_path / "cont" / "s2" / "log.csv").read_text().splitlines()
    assert len(log) == 4 and all(row.split(",")[4] not in ("", "nan") for row in log[1:])
