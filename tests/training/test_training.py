"""Both stages learn (overfitting one image), resume is bit-exact, the CLI config is strict."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import tomllib
import torch

from models import load_model, load_stage1_model
from training.config import add_arguments, config_from_args
from training.run import run_stage

from .conftest import tiny_config


def _losses(stage_dir: Path, key: str = "loss") -> list[float]:
    rows = [json.loads(line) for line in (stage_dir / "log.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def _overfit_config(tmp_path, one_image_dir, **kw):
    return tiny_config(
        tmp_path / "run", one_image_dir, augment=False, lr=2e-3, schedule="constant", betas=(0.9, 0.99), **kw
    )


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory, one_image_dir):
    tmp = tmp_path_factory.mktemp("s1")
    cfg = _overfit_config(tmp, one_image_dir, steps=40)
    run_stage(cfg)
    return cfg


def test_stage1_overfits_one_image(stage1_run):
    losses = _losses(stage1_run.stage_dir)
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    net = load_stage1_model(stage1_run.stage_dir / "model_latest.safetensors")
    assert net.config.dirformer.dim == 8


def test_stage2_learns_from_the_stage1_teacher(stage1_run, tmp_path):
    cfg = _overfit_config(tmp_path, stage1_run.run_dir.parent, steps=40, stage=2, encoder_frac=0.25)
    cfg = cfg.__class__(**{**cfg.__dict__, "out": str(stage1_run.run_dir), "data": stage1_run.data})
    run_stage(cfg)
    diff = _losses(cfg.stage_dir, "diff")
    rec = _losses(cfg.stage_dir, "rec")
    assert len(diff) == 40 and len(rec) == 30  # 10 warm-up steps optimise L_diff only
    assert sum(diff[-5:]) / 5 < 0.5 * sum(diff[:5]) / 5
    # its own first steps are the baseline: measured last/first 0.30 for L_rec (0.20 for L_diff)
    assert sum(rec[-5:]) / 5 < 0.5 * sum(rec[:5]) / 5, rec
    net = load_model(cfg.stage_dir / "model_latest.safetensors")
    s1 = load_stage1_model(stage1_run.stage_dir / "model_latest.safetensors")
    assert net.config == s1.config
    # the DIRformer was initialised from stage 1 and then trained jointly
    g2, g1 = net.G.state_dict(), s1.G.state_dict()
    assert g2.keys() == g1.keys() and any(not torch.equal(g2[k], g1[k]) for k in g1)


def test_stage2_continues_from_a_stage2_checkpoint(stage1_run, tmp_path):
    """`init_student` starts the whole stage-2 network (CPEN_S2 and denoiser too) from a stage-2 checkpoint,
    still distilling from the stage-1 teacher; without it CPEN_S2 starts fresh."""
    init = str(stage1_run.stage_dir / "model_latest.safetensors")
    first = tiny_config(tmp_path / "first", stage1_run.data[0], stage=2, steps=4, init=init)
    run_stage(first)
    trained = load_model(first.stage_dir / "model_latest.safetensors").state_dict()
    frozen = dict(steps=2, init=init, lr=0.0, lr_encoder=0.0, schedule="constant")
    student = str(first.stage_dir / "model_latest.safetensors")
    cont = tiny_config(tmp_path / "cont", stage1_run.data[0], stage=2, init_student=student, **frozen)
    run_stage(cont)
    continued = load_model(cont.stage_dir / "model_latest.safetensors").state_dict()
    assert all(torch.allclose(continued[k], trained[k], atol=1e-6) for k in trained)
    fresh = tiny_config(tmp_path / "fresh", stage1_run.data[0], stage=2, **frozen)
    run_stage(fresh)
    restarted = load_model(fresh.stage_dir / "model_latest.safetensors").state_dict()
    cpen = [k for k in trained if k.startswith("condition.")]
    assert cpen and any(not torch.allclose(restarted[k], trained[k], atol=1e-6) for k in cpen)


def _state(stage_dir: Path) -> dict:
    return torch.load(stage_dir / "state.pt", weights_only=True)


def _assert_same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("stage", [1, 2])
def test_resume_is_bit_exact(stage, stage1_run, tmp_path, image_dir):
    common = dict(task="deblur", schedule="cosine", steps=6, patches=(32, 40), batches=(2, 1))
    common["model_refinement"] = 1
    if stage == 2:
        common.update(stage=2, init=str(stage1_run.stage_dir / "model_latest.safetensors"), task="sr-x4")
        common.update(patches=(32,), batches=(2,), encoder_frac=0.34)
        common.pop("model_refinement")
    straight = tiny_config(tmp_path / "a", image_dir, **common)
    run_stage(straight)
    first = tiny_config(tmp_path / "b", image_dir, stop_at=3, **common)
    run_stage(first)
    assert _state(first.stage_dir)["step"] == 3
    run_stage(tiny_config(tmp_path / "b", image_dir, resume=True, **common))
    a, b = _state(straight.stage_dir), _state(first.stage_dir)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema", "opt"):
        _assert_same(a[key], b[key], key)
    assert _losses(straight.stage_dir) == _losses(first.stage_dir)


def _parse(argv, stage=1):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv), stage)


def test_cli_defaults_and_strict_keys(tmp_path):
    cfg = _parse(["--task", "sr-x4", "--data", "a", "b"])
    assert cfg.data == ("a", "b") and cfg.betas == (0.9, 0.99) and cfg.model_config().scale == 4
    deblur = _parse(["--task", "deblur", "--data", "x"])
    assert deblur.schedule == "cosine_restart" and deblur.patches == (192, 256, 320, 384, 464, 512)
    inpaint = _parse(["--task", "inpaint", "--data", "x"], stage=2)
    assert (inpaint.weight_known, inpaint.weight_missing, inpaint.grad_clip) == (10.0, 0.0, 1.0)
    conf = tmp_path / "c.toml"
    conf.write_text('task = "deblur"\nsteps = 7\npatches = [48]\n')
    cfg = _parse(["--config", str(conf), "--steps", "9"])
    assert (cfg.task, cfg.steps, cfg.patches, cfg.phase_fracs) == ("deblur", 9, (48,), ())
    conf.write_text("stepz = 7\n")
    with pytest.raises(ValueError, match="unknown key"):
        _parse(["--config", str(conf)])
    with pytest.raises(SystemExit):
        _parse(["--stepz", "3"])
    with pytest.raises(ValueError, match="betas"):
        _parse(["--betas", "0.9"])
    assert _parse(["--task", "inpaint", "--hole-loss", "l2"]).hole_loss == "l2"
    with pytest.raises(ValueError, match="hole_loss"):
        _parse(["--task", "inpaint", "--hole-loss", "l3"])
    assert _parse(["--task", "sr-x4", "--pixel-loss", "l2"]).pixel_loss == "l2"
    with pytest.raises(ValueError, match="pixel_loss"):
        _parse(["--task", "sr-x4", "--pixel-loss", "huber"])


def test_stage2_without_stage1_checkpoint_is_a_clear_error(tmp_path, image_dir):
    with pytest.raises(FileNotFoundError, match="stage-1 checkpoint"):
        run_stage(tiny_config(tmp_path, image_dir, stage=2))


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[2] / "training" / "configs").rglob("*.toml")), ids=lambda p: p.name
)
def test_every_recipe_in_the_repository_parses(path):
    """A typo in a shipped recipe would otherwise surface only hours into `make train-defaults`."""
    stage = 1 if path.stem.endswith("-s1") else 2
    args = ["--config", str(path)]
    if tomllib.loads(path.read_text()).get("teacher") is False:  # a teacher-free continuation names its start
        args += ["--init-student", "models/weights/deblur.safetensors"]
    cfg = _parse(args, stage)
    assert cfg.teacher or cfg.init_student
    assert cfg.steps > 0 and cfg.task in ("deblur", "sr-x4", "inpaint")
    # the training images are `data/train` only: what `make data` fetches (training/data/sources.json)
    assert [Path(d) for d in cfg.data] == [Path("data/train")]
    assert not cfg.val or Path(cfg.val).parts[:2] == ("data", "val")


def test_a_continuation_can_teach_an_inpainting_network_a_new_pre_fill(tmp_path, image_dir):
    """`model_fill_iterations` sets the pre-fill a fresh inpainting model uses, and a teacher-free
    continuation of a shipped one trains (and saves) the same weights behind the new fill."""
    fresh = tiny_config(tmp_path, image_dir, task="inpaint")
    assert fresh.model_config().fill_biharmonic_iterations == 100
    assert dataclasses.replace(fresh, model_fill_iterations=7).model_config().fill_biharmonic_iterations == 7
    run_stage(tiny_config(tmp_path / "base", image_dir, task="inpaint", steps=1))
    student = run_stage(tiny_config(tmp_path / "base", image_dir, task="inpaint", steps=1, stage=2))
    cont = tiny_config(tmp_path / "cont", image_dir, task="inpaint", steps=2, stage=2, teacher=False,
                       init_student=str(student), model_fill_iterations=7, ema=0.0, lr=1e-3)  # fmt: skip
    before, after = load_model(student), load_model(run_stage(cont))
    assert before.config.fill_biharmonic_iterations == 100
    assert after.config.fill_biharmonic_iterations == 7
    assert after.config == dataclasses.replace(before.config, fill_biharmonic_iterations=7)
    assert any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
