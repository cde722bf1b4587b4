"""`python -m training probe`: checkpoints of a run scored on the fixed issue-4 slice."""

from __future__ import annotations

import csv

import torch

from models import DiffIRS1, DiffIRS2, save_checkpoint
from models.variants import get_preset
from training.probe import main as probe_main
from training.probe import probe_set


def test_probe_scores_each_checkpoint_once_and_resumes(tmp_path, eval_data):
    root = eval_data("Kodak24")
    cfg = get_preset("deblur-small")
    torch.manual_seed(0)
    s1, s2 = DiffIRS1(cfg), DiffIRS2(cfg)
    with torch.no_grad():  # identity restorers: output = the blurred input (global residual)
        s1.G.output.weight.zero_()
        s2.G.output.weight.zero_()
    run = tmp_path / "run"
    save_checkpoint(s1, run / "s1" / "model_0000200.safetensors")
    save_checkpoint(s1, run / "s1" / "model_0000300.safetensors")  # not a multiple of --every
    save_checkpoint(s2, run / "s2" / "model_0000200.safetensors")
    assert probe_main(["--task", "deblur", "--run", str(run), "--every", "200", "--data-root", str(root)]) == 0
    rows = list(csv.DictReader((run / "probe.csv").open()))
    assert [(r["stage"], r["step"]) for r in rows] == [("baseline (blurred input)", "0"), ("s1", "200"), ("s2", "200")]
    _, _, blurred = probe_set("deblur", root)
    # an identity restorer scores exactly the blurred input (to the CSV's 3 decimals)
    assert all(abs(float(r["psnr"]) - blurred) < 1e-3 for r in rows)
    probe_main(
        ["--task", "deblur", "--run", str(run), "--every", "200", "--data-root", str(root)]
    )  # nothing new: nothing appended
    assert len(list(csv.DictReader((run / "probe.csv").open()))) == 3
