"""Data pipeline: seeded samples, schedule arithmetic, worker-independent and resumable batches, DDP splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from training.datasets import (
    PairedDataset,
    PatchSchedule,
    Phase,
    StepBatchSampler,
    UnpairedDataset,
    dihedral,
    make_loader,
)
from training.degradations import LamaMasks, MotionBlur, make_degradation


def test_schedule_sample_numbering():
    s = PatchSchedule([Phase(3, 32, 4), Phase(2, 48, 2)])
    assert [s.phase_at(i).patch for i in range(7)] == [32, 32, 32, 48, 48, 48, 48]
    # world 2: 8 samples per step in phase 1, 4 after
    assert [s.first_sample(i, 2) for i in range(7)] == [0, 8, 16, 24, 28, 32, 36]


def test_ranks_take_disjoint_slices_of_the_single_process_batch():
    s = PatchSchedule([Phase(2, 32, 3), Phase(2, 48, 2)])
    ranks = [list(StepBatchSampler(s, 0, 4, rank=r, world=2)) for r in range(2)]
    for step in range(4):
        a, b = ranks[0][step], ranks[1][step]
        ids = [k for k, _ in a + b]
        assert len(set(ids)) == len(ids)
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # contiguous block of this step
    single = PatchSchedule([Phase(2, 32, 6), Phase(2, 48, 4)])
    one = list(StepBatchSampler(single, 0, 4))
    assert [k for k, _ in one[3]] == [k for k, _ in ranks[0][3] + ranks[1][3]]


@pytest.mark.parametrize("deg", [make_degradation("bicubic", 4), MotionBlur(), LamaMasks()])
def test_samples_are_a_function_of_seed_and_number(image_dir, deg):
    ds = UnpairedDataset([image_dir], deg, seed=3)
    a, b = ds[(5, 32)], ds[(5, 32)]
    for k in a:
        assert torch.equal(a[k], b[k])
    c = ds[(6, 32)]
    assert not torch.equal(a["gt"], c["gt"])
    assert a["gt"].shape == (3, 32, 32)
    assert a["lq"].shape[-1] == 32 // deg.scale
    if isinstance(deg, LamaMasks):
        assert a["lq"].shape[0] == 4 and torch.equal(a["lq"][3:], a["mask"])


def test_loader_batches_do_not_depend_on_workers_and_resume_mid_run(image_dir):
    ds = UnpairedDataset([image_dir], MotionBlur(), seed=1)
    sched = PatchSchedule([Phase(2, 32, 2), Phase(2, 40, 1)])
    full = list(make_loader(ds, sched, 0, 4, workers=0))
    threaded = list(make_loader(ds, sched, 0, 4, workers=1))
    resumed = list(make_loader(ds, sched, 2, 4, workers=0))
    assert [b["gt"].shape[-1] for b in full] == [32, 32, 40, 40]
    for x, y in zip(full, threaded):
        assert torch.equal(x["lq"], y["lq"]) and torch.equal(x["gt"], y["gt"])
    for x, y in zip(full[2:], resumed):
        assert torch.equal(x["lq"], y["lq"])


def test_paired_crops_are_aligned(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "gt").mkdir()
    (tmp_path / "lq").mkdir()
    for i in range(2):
        gt = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
        Image.fromarray(gt).save(tmp_path / "gt" / f"{i}.png")
        Image.fromarray(255 - gt).save(tmp_path / "lq" / f"{i}.png")
    ds = PairedDataset(tmp_path, scale=1, seed=0)
    for k in range(5):
        s = ds[(k, 24)]
        assert s["gt"].shape == (3, 24, 24)
        assert torch.allclose(s["lq"], 1 - s["gt"], atol=1e-6)


def test_paired_missing_files_is_a_clear_error(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "lq").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "gt" / "a.png")
    with pytest.raises(FileNotFoundError, match="lacks"):
        PairedDataset(tmp_path)


def test_dihedral_gives_eight_distinct_transforms():
    x = torch.arange(9.0).reshape(1, 3, 3)
    outs = {tuple(dihedral(x, c).flatten().tolist()) for c in range(8)}
    assert len(outs) == 8
