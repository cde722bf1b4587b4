"""The inpainting reconstruction losses pull a hole towards the right statistic of its possible contents."""

from __future__ import annotations

import pytest
import torch

from training import losses


def _best_constant(loss_fn) -> float:
    """Fit one value for a hole whose true content is 0 in two samples and 1 in the third."""
    gt = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1, 1)
    mask = torch.ones_like(gt)
    c = torch.full((1, 1, 1, 1), 0.5, requires_grad=True)
    opt = torch.optim.SGD([c], lr=0.02)
    for _ in range(2000):
        opt.zero_grad()
        loss_fn(c.expand_as(gt), gt, mask, 1.0, 1.0).backward()
        opt.step()
    return c.item()


def test_l2_hole_loss_converges_to_the_mean_and_l1_to_the_median():
    assert _best_constant(losses.masked_l1_l2) == pytest.approx(1 / 3, abs=0.01)
    assert _best_constant(losses.masked_l1) == pytest.approx(0.0, abs=0.03)


def test_known_pixels_keep_l1_and_weights_apply_per_region():
    out, gt = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.1)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    known = losses.masked_l1_l2(out, gt, mask, 1.0, 0.0)
    hole = losses.masked_l1_l2(out, gt, mask, 0.0, 1.0)
    assert known.item() == pytest.approx(3 * 0.1 / 4)
    assert hole.item() == pytest.approx(0.01 / 4 / 0.05)
    # at an error of 0.025 the hole gradient equals L1's
    out = torch.full((1, 1, 2, 2), 0.025, requires_grad=True)
    losses.masked_l1_l2(out, torch.zeros_like(out), mask, 0.0, 1.0).backward()
    g2 = out.grad[0, 0, 0, 0].item()
    out.grad = None
    losses.masked_l1(out, torch.zeros_like(out), mask, 0.0, 1.0).backward()
    assert g2 == pytest.approx(out.grad[0, 0, 0, 0].item())


@pytest.mark.parametrize("pixel_loss, expected", [("l1", 0.2), ("l2", 0.04)])
def test_pixel_loss_choice_is_what_the_objective_minimises(pixel_loss, expected):
    """SR/deblur: `pixel_loss` selects mean |error| or mean squared error (0.2 everywhere -> 0.2 or 0.04)."""
    from models.tasks import get_task
    from training.config import TrainConfig
    from training.objective import ImageObjective

    cfg = TrainConfig(task="sr-x4", pixel_loss=pixel_loss)
    objective = ImageObjective(cfg, get_task("sr-x4").config, torch.device("cpu"))
    out, gt = torch.full((2, 3, 8, 8), 0.7), torch.full((2, 3, 8, 8), 0.5)
    loss, logs = objective.generator_loss(out, {"gt": gt})
    assert loss.item() == pytest.approx(expected, rel=1e-5) and logs["rec"] == pytest.approx(expected, rel=1e-5)
