"""The shipped default weights restore one real image per task better than the classic baseline.

One fixed image per task, the first of each evaluation protocol (not hand-picked), cropped where
needed to keep the test fast; the full numbers are in the model cards.
"""

from __future__ import annotations

import pytest
import torch

from models import load_model
from models.tasks import get_task
from training.degradations import SHARED_DATA, bicubic_down, bicubic_up, load_levin_kernels, mod_crop
from training.evaluate import Case, blurred_kodak, face_masks, restore
from training.imageio import list_images, read_image
from training.metrics import psnr


def _net(task: str):
    path = get_task(task).default_checkpoint_path()
    assert path is not None and path.is_file(), f"{task}: shipped checkpoint {path} is missing"
    assert path.stat().st_size <= 20e6
    return load_model(path)


def test_sr_x4_beats_bicubic_on_set5_baby():
    gt = mod_crop(read_image(list_images([SHARED_DATA / "val" / "Set5"])[0]), 4)[:, :256, :256]
    lq = bicubic_down(gt, 4)
    out = restore(_net("sr-x4"), Case("Set5", "baby", lq, gt), seed=0)
    assert psnr(out, gt, 4, True) > psnr(bicubic_up(lq, 4), gt, 4, True) + 0.3


def test_deblur_beats_the_blurred_input_on_kodim01():
    gt = read_image(list_images([SHARED_DATA / "val" / "Kodak24"])[0])[:, 128:384, 256:512]
    lq = blurred_kodak(gt, 0, load_levin_kernels(SHARED_DATA / "tasks" / "deblur" / "kernels"))
    out = restore(_net("deblur"), Case("Kodak24", "kodim01", lq, gt), seed=0)
    # A real but small gain: the shipped deblur model is far from the issue-4 bar (+3 dB on Kodak24,
    # see models/weights/deblur.md); raise this threshold as training continues.
    assert psnr(out, gt) > psnr(lq, gt) + 0.05


def test_inpaint_beats_a_mean_colour_fill_on_the_first_face():
    # The shipped inpainting model does NOT beat OpenCV Telea / biharmonic yet (issue-4 bar, see
    # models/weights/inpaint.md); this checks the weaker claim that it fills holes with real content.
    gt = read_image(list_images([SHARED_DATA / "tasks" / "inpaint" / "faces" / "celebahq256"])[0])
    m = torch.from_numpy(face_masks(SHARED_DATA)[0])[None]
    case = Case("celebahq256", "first", gt * (1 - m), gt, m)
    out = restore(_net("inpaint"), case, seed=0)
    known_mean = (gt * (1 - m)).sum(dim=(1, 2), keepdim=True) / (1 - m).sum()
    mean_fill = gt * (1 - m) + known_mean * m
    assert psnr(out, gt) > psnr(mean_fill, gt) + 0.5
    assert torch.equal(out * (1 - m), gt * (1 - m))  # known pixels are kept exactly


@pytest.mark.parametrize("task", ["deblur", "sr-x4", "inpaint"])
def test_shipped_outputs_are_deterministic(task):
    net = _net(task)
    cfg = net.config
    x = torch.rand((1, cfg.image_channels, 16, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = net.forward_any_size(x, generator=torch.Generator().manual_seed(0))
        b = net.forward_any_size(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape[-2:] == (16 * cfg.scale, 24 * cfg.scale)
