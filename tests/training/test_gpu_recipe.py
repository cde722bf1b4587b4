"""`training.gpu_recipe`: the GPU plan fits its budget; the dry run returns only weights and one log, which the
CPU evaluation turns back into checkpoints and judges against the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import load_model
from models.tasks import get_task
from training.gpu_recipe import LOG_FILE, SHARES, TASK_RECIPES, decide, main, plan, restore_sidecars, subset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "train").mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (80 + 8 * i, 96, 3), dtype=np.uint8)).save(root / "train" / f"{i:03d}.png")
    return root


def test_gpu_plan_is_large_mixed_precision_and_within_budget(tmp_path):
    cfgs = [plan(task, tmp_path, 2.5, dry_run=False) for task in TASK_RECIPES]
    assert sum(c.max_minutes for c in cfgs) <= 2.5 and abs(sum(SHARES.values()) - 1) < 1e-9
    for c in cfgs:
        assert c.device == "cuda" and c.precision == "bf16"
        assert c.patches[0] >= 256 and c.batches[0] >= 32
        assert not c.teacher and c.init_student == str(get_task(c.task).default_checkpoint_path())
        assert c.run_dir == tmp_path / c.task and not c.resume


def test_dry_run_returns_weights_and_one_log_that_become_checkpoints_again(tmp_path, data_root):
    out = tmp_path / "out"
    args = ["train", "--out", str(out), "--data-root", str(data_root), "--dry-run", "--scratch", str(tmp_path)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([LOG_FILE] + [f"{t}.safetensors" for t in TASK_RECIPES])
    assert not list(tmp_path.glob("diffir-gpu-train-*")), "the run folders (optimiser state) were not cleaned up"
    record = json.loads((out / LOG_FILE).read_text())
    for task in TASK_RECIPES:
        entry = record["tasks"][task]
        assert entry["status"] == "pass" and entry["steps"] == 2 and entry["log"][-1]["step"] == 2
    found = restore_sidecars(out)
    assert set(found) == set(TASK_RECIPES)
    for task, weights in found.items():
        net, shipped = load_model(weights), load_model(get_task(task).default_checkpoint_path())
        assert net.config.name == shipped.config.name
        assert json.loads(weights.with_suffix(".json").read_text())["provenance"]["config"]["teacher"] is False


def test_a_failed_task_is_logged_and_the_others_still_train(tmp_path, data_root, monkeypatch):
    import training.run

    real = training.run.run_stage

    def broken_for_sr(cfg):
        if cfg.task == "sr-x4":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(cfg)

    monkeypatch.setattr(training.run, "run_stage", broken_for_sr)
    out = tmp_path / "out"
    args = ["train", "--out", str(out), "--data-root", str(data_root), "--dry-run", "--tasks", "sr-x4", "deblur"]
    assert main(args) == 1
    record = json.loads((out / LOG_FILE).read_text())
    assert record["failed"] == ["sr-x4"] and "illegal memory access" in record["tasks"]["sr-x4"]["error"]
    assert record["tasks"]["deblur"]["status"] == "pass" and (out / "deblur.safetensors").is_file()


def test_subset_takes_whole_images_up_to_the_budget(tmp_path, data_root):
    sizes = sorted((p.name, p.stat().st_size) for p in (data_root / "train").iterdir())
    budget = (sizes[0][1] + sizes[1][1] + 1) / 2**20
    info = subset(data_root, tmp_path / "sub", budget)
    assert info["images"] == 2 and sorted(p.name for p in (tmp_path / "sub" / "train").iterdir()) == [
        sizes[0][0],
        sizes[1][0],
    ]


def test_the_evaluation_ships_only_a_network_that_beats_the_shipped_one(tmp_path, monkeypatch):
    import training.gpu_recipe as recipe

    returned = tmp_path / "returned"
    returned.mkdir()
    shipped = get_task("inpaint").default_checkpoint_path()
    (returned / "inpaint.safetensors").write_bytes(shipped.read_bytes())
    sidecar = json.loads(shipped.with_suffix(".json").read_text())
    (returned / LOG_FILE).write_text(json.dumps({"tasks": {"inpaint": {"status": "pass", "sidecar": sidecar}}}))
    scores = {"returned": 30.0, "shipped": 29.99}
    monkeypatch.setattr(recipe, "score", lambda task, weights, root, limit: {
        "mean_psnr": scores["shipped" if weights == shipped else "returned"]})  # fmt: skip
    copied = []
    monkeypatch.setattr(recipe.shutil, "copyfile", lambda src, dst: copied.append((src, dst)))
    verdict = decide(returned, tmp_path, limit=0, ship=True)["inpaint"]
    assert verdict["gain_db"] == pytest.approx(0.01) and not verdict["ships"] and copied == []  # under MIN_GAIN_DB
    scores["returned"] = 30.5
    verdict = decide(returned, tmp_path, limit=0, ship=True)["inpaint"]
    assert verdict["ships"] and {dst for _, dst in copied} == {shipped, shipped.with_suffix(".json")}
    assert json.loads((returned / "decision.json").read_text())["inpaint"]["ships"] is True
