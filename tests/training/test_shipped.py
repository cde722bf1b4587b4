"""The shipped default weights restore one real image per task better than the classic baseline.

One fixed image per task, the first of each evaluation protocol (not hand-picked), cropped where
needed to keep the test fast; the full numbers are in the model cards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models import load_model
from models.checkpoint import read_sidecar
from models.tasks import get_task
from training.degradations import bicubic_down, bicubic_up, convolve, load_levin_kernels, mod_crop
from training.evaluate import (
    Case,
    blurred_kodak,
    face_masks,
    markdown_table,
    mild_shake_kernel,
    noisy,
    protocol_cases,
    restore,
    telea,
)
from training.imageio import list_images, read_image
from training.metrics import psnr


def _net(task: str):
    path = get_task(task).default_checkpoint_path()
    assert path is not None and path.is_file(), f"{task}: shipped checkpoint {path} is missing"
    assert path.stat().st_size <= 20e6
    return load_model(path)


def test_sr_x4_beats_bicubic_on_set5_baby(eval_data):
    gt = mod_crop(read_image(list_images([eval_data("Set5") / "val" / "Set5"])[0]), 4)[:, :256, :256]
    lq = bicubic_down(gt, 4)
    out = restore(_net("sr-x4"), Case("Set5", "baby", lq, gt), seed=0)
    # +1.22 dB measured on this crop (31.83 vs 30.61); the whole-set numbers are in the committed evaluation
    assert psnr(out, gt, 4, True) > psnr(bicubic_up(lq, 4), gt, 4, True) + 1.0


# Rows 128-383, columns 256-511 of the first two Kodak24 photos, shipped (tests/fixtures/images/README.md).
KODAK_CROPS = Path(__file__).resolve().parents[1] / "fixtures" / "images"


def test_the_shipped_kodak_crops_are_the_photos_own_pixels(eval_data):
    kodak = eval_data("Kodak24") / "val" / "Kodak24"
    for name in ("kodim01", "kodim02"):
        crop = read_image(kodak / f"{name}.png")[:, 128:384, 256:512]
        assert torch.equal(read_image(KODAK_CROPS / f"{name}-crop.png"), crop), name


def test_deblur_beats_the_blurred_input_on_kodim01():
    gt = read_image(KODAK_CROPS / "kodim01-crop.png")
    lq = blurred_kodak(gt, 0, load_levin_kernels())
    out = restore(_net("deblur"), Case("Kodak24", "kodim01", lq, gt), seed=0)
    # A real but small gain (+0.46 dB measured on this crop; +0.38 for the release before): far from the
    # +3 dB bar on Kodak24 (see models/weights/deblur.md).
    assert psnr(out, gt) > psnr(lq, gt) + 0.25


def test_deblur_leaves_a_sharp_photo_sharp():
    """A sharp photo (only sigma = 1/255 noise, 47.8 dB) sent to deblur must come back undamaged: >= 38 dB
    against the clean image. Measured 47.3 dB (46.6 for the release before); the model shipped before the
    no-harm training gave 28.6 dB."""
    gt = read_image(KODAK_CROPS / "kodim01-crop.png")
    lq = noisy(gt, 0)
    out = restore(_net("deblur"), Case("Kodak24 sharp", "kodim01", lq, gt), seed=0)
    assert psnr(lq, gt) > 47 and psnr(out, gt) >= 38.0


def test_deblur_does_not_damage_a_mildly_shaken_photo():
    gt = read_image(KODAK_CROPS / "kodim02-crop.png")
    lq = noisy(convolve(gt, mild_shake_kernel(1)), 1)
    out = restore(_net("deblur"), Case("Kodak24 mild shake", "kodim02", lq, gt), seed=0)
    # +0.27 dB measured (+0.47 the release before); the bar is "no image worse than -0.5 dB"
    assert psnr(out, gt) >= psnr(lq, gt) - 0.5


def test_inpaint_beats_opencv_telea_on_the_first_faces(eval_data):
    """The first three faces of the protocol (one image alone is within 0.1 dB of Telea). Against
    scikit-image's biharmonic the model is level on the whole set only (models/weights/inpaint.md)."""
    net = _net("inpaint")
    root = eval_data("celebahq256", "masks")
    faces = list_images([root / "tasks" / "inpaint" / "faces" / "celebahq256"])[:3]
    ours, classic = [], []
    for path, hole in zip(faces, face_masks(root)):
        gt = read_image(path)
        m = torch.from_numpy(hole)[None]
        out = restore(net, Case("celebahq256", path.stem, gt * (1 - m), gt, m), seed=0)
        assert torch.equal(out * (1 - m), gt * (1 - m))  # known pixels are kept exactly
        ours.append(psnr(out, gt))
        classic.append(psnr(telea(gt * (1 - m), m), gt))
    assert sum(ours) / 3 > sum(classic) / 3 + 0.5


@pytest.mark.parametrize("task", ["deblur", "sr-x4", "inpaint"])
def test_shipped_outputs_are_deterministic(task):
    net = _net(task)
    cfg = net.config
    x = torch.rand((1, cfg.image_channels, 16, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = net.forward_any_size(x, generator=torch.Generator().manual_seed(0))
        b = net.forward_any_size(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape[-2:] == (16 * cfg.scale, 24 * cfg.scale)


# --- the model cards' evaluation tables: the committed results of one evaluation run -------------------
EVAL_DIR = Path(__file__).resolve().parents[2] / "models" / "weights" / "eval"
# The protocols each committed evaluation ran, in the order of its results (sr-x4: both, "ours" first).
EVAL_PROTOCOLS = {"deblur": ("all",), "inpaint": ("ours",), "sr-x4": ("ours", "standard")}
# The data sets (training/data/sources.json) those protocols read.
EVAL_SETS = {
    "deblur": ("Kodak24", "gopro"),
    "inpaint": ("masks", "celebahq256", "ffhq256", "places2"),
    "sr-x4": ("Set5", "Set14", "BSD100", "Urban100"),
}


def _committed(task: str) -> dict:
    path = EVAL_DIR / f"{task}.json"
    assert path.is_file(), f"{path} is missing: python -m training evaluate --task {task} ... --out, then copy"
    return json.loads(path.read_text())


def _results_by_protocol(task: str) -> list[tuple[str, dict]]:
    result = _committed(task)
    return [(p, result if i == 0 else result[p]) for i, p in enumerate(EVAL_PROTOCOLS[task])]


@pytest.mark.parametrize("task", sorted(EVAL_PROTOCOLS))
def test_card_tables_are_the_committed_evaluation_of_the_shipped_weights(task):
    """Every evaluation table in a model card is, row for row, the committed results file, and that file
    evaluated exactly the weights that ship (same SHA-256)."""
    result = _committed(task)
    path = get_task(task).default_checkpoint_path()
    assert result["sha256"] == read_sidecar(path)["sha256"], "the committed evaluation is of other weights"
    card = path.with_suffix(".md").read_text()
    for protocol, res in _results_by_protocol(task):
        rows = [line for line in markdown_table(res).splitlines() if line.startswith("| ")][1:]
        assert len(rows) == len(res["means"]) >= 2
        for row in rows:
            assert row in card, f"{task} card ({protocol}) lacks the evaluated row {row!r}"


@pytest.mark.parametrize("task", sorted(EVAL_PROTOCOLS))
def test_committed_evaluation_reproduces_on_the_first_image_of_each_set(task, eval_data):
    """The committed per-image numbers are what the shipped model gives now: the first image of every set
    (whole image, not a crop) is restored again and must match its committed PSNR to 0.01 dB."""
    spec = get_task(task)
    root = eval_data(*EVAL_SETS[task])
    net, kind = _net(task), spec.config.kind
    border, y = (spec.scale, True) if kind == "sr" else (0, False)
    for protocol, res in _results_by_protocol(task):
        committed = {(r["set"], r["image"]): r["model"]["psnr"] for r in res["images"]}
        sets = [s for s in res["means"] if s != "all"]
        seen: set[str] = set()
        # sr: one set at a time (no need to degrade every image of the sets before); others: in order
        streams = (
            [protocol_cases(kind, spec.scale, root, protocol, [s]) for s in sets]
            if kind == "sr"
            else [protocol_cases(kind, spec.scale, root, protocol)]
        )
        for case in (c for stream in streams for c in stream):
            if case.set_name in seen:
                continue
            seen.add(case.set_name)
            out = restore(net, case, seed=0)
            got = psnr(out, case.gt, border, y)
            want = committed[(case.set_name, case.name)]
            assert abs(got - want) <= 0.01, (task, protocol, case.set_name, case.name, got, want)
            if len(seen) == len(sets):
                break
        assert seen == set(sets)
