"""`make train-gpu` (training.gpu_recipe): the GPU plan fits the device budget, and its CPU dry-run trains and
writes a checkpoint of each shipped model where the device's output folder would bring it back."""

from __future__ import annotations

import json

from models import load_model
from training.gpu_recipe import SHARES, TASK_RECIPES, main, plan


def test_gpu_plan_is_large_mixed_precision_and_within_budget(tmp_path):
    cfgs = [plan(task, tmp_path, 8.0, dry_run=False) for task in TASK_RECIPES]
    assert sum(c.max_minutes for c in cfgs) <= 8.0 and abs(sum(SHARES.values()) - 1) < 1e-9
    for c in cfgs:
        assert c.device == "cuda" and c.precision == "bf16"
        assert c.patches[0] >= 256 and c.batches[0] >= 32
        assert not c.teacher and c.init_student.endswith(f"{c.task}.safetensors")
        assert c.run_dir == tmp_path / c.task and 0 < c.save_every <= 500


def test_dry_run_continues_each_shipped_model_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    assert main(["--out", str(out), "--dry-run"]) == 0
    done = json.loads((out / "gpu_recipe.json").read_text())
    assert set(done) == set(TASK_RECIPES)
    for task in TASK_RECIPES:
        ckpt = out / task / "s2" / "model_latest.safetensors"
        prov = json.loads(ckpt.with_suffix(".json").read_text())["provenance"]
        assert prov["step"] == 2 and prov["task"] == task and prov["config"]["teacher"] is False
        assert load_model(ckpt).config.name == load_model(prov["config"]["init_student"]).config.name
    # a second run resumes (already at its 2 steps) instead of starting over
    assert main(["--out", str(out), "--dry-run", "--tasks", "deblur"]) == 0
    assert json.loads((out / "deblur" / "s2" / "model_latest.json").read_text())["provenance"]["step"] == 2
