"""The smooth hole pre-fill of the `inpaint-fill-small` preset and its place in the DIRformer."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models import DiffIRS2, ModelConfig
from models.config import CPENConfig, DIRformerConfig
from models.inpainting import smooth_fill
from models.variants import get_preset


def _hole(h: int, w: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    m = torch.zeros(1, 1, h, w)
    y0, y1, x0, x1 = box
    m[..., y0:y1, x0:x1] = 1
    return m


def test_known_pixels_are_returned_bit_exactly():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 37, 53, generator=g)
    mask = (torch.rand(2, 1, 37, 53, generator=g) > 0.6).float()
    out = smooth_fill(img * (1 - mask), mask)
    assert out.shape == img.shape
    assert torch.equal(out * (1 - mask), img * (1 - mask))


def test_constant_image_is_filled_with_its_constant():
    img = torch.full((1, 3, 64, 48), 0.3)
    img[:, 1] = 0.7
    mask = _hole(64, 48, (10, 50, 5, 40))
    out = smooth_fill(img * (1 - mask), mask)
    assert torch.allclose(out, img, atol=1e-5)


def test_thin_stroke_over_a_ramp_is_interpolated_closely():
    """A harmonic function (a linear ramp) is what a Laplace fill reproduces; a zero fill misses by ~0.5."""
    ramp = torch.linspace(0, 1, 96).expand(1, 3, 96, 96).clone()
    mask = _hole(96, 96, (0, 96, 40, 46))  # a 6 px vertical stroke across the ramp
    out = smooth_fill(ramp * (1 - mask), mask)
    assert (out - ramp).abs().max() < 0.01


def test_large_hole_stays_within_the_border_colours():
    img = torch.zeros(1, 3, 128, 128)
    img[..., :, 64:] = 1.0  # left half black, right half white
    mask = _hole(128, 128, (20, 108, 20, 108))
    out = smooth_fill(img * (1 - mask), mask)
    inside = out[..., 20:108, 20:108]
    # the biharmonic stage may overshoot a little (no maximum principle), never wildly
    assert inside.min() >= -0.05 and inside.max() <= 1.05
    # the fill follows the border: darker on the left of the hole than on its right
    assert inside[..., :, :10].mean() < 0.3 < 0.7 < inside[..., :, -10:].mean()


def test_all_hole_image_gives_zeros_not_nan():
    out = smooth_fill(torch.zeros(1, 3, 16, 16), torch.ones(1, 1, 16, 16))
    assert torch.isfinite(out).all() and out.abs().max() == 0


def _fill_only(net: DiffIRS2, seed: int, h: int, w: int, box: tuple[int, int, int, int]):
    """`net` with its output convolution zeroed (so it returns its fill) run on a random image with a
    box hole; returns (output, holed image, mask)."""
    with torch.no_grad():
        net.G.output.weight.zero_()
    img = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))
    mask = _hole(h, w, box)
    holed = img * (1 - mask)
    with torch.no_grad():
        out = net(torch.cat([holed, mask], 1), generator=torch.Generator().manual_seed(0))
    return out, holed, mask


def test_fill_is_added_back_as_the_global_residual():
    """With the output convolution zeroed the network returns exactly the smooth fill."""
    out, holed, mask = _fill_only(DiffIRS2(get_preset("inpaint-fill-small")).eval(), 1, 64, 64, (8, 30, 12, 60))
    assert torch.allclose(out, smooth_fill(holed, mask), atol=1e-6)


def test_official_inpainting_input_is_unchanged_by_default():
    cfg = get_preset("inpaint")
    assert cfg.hole_fill == "zero"
    assert ModelConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "hole_fill"}) == cfg


def test_hole_fill_is_refused_for_other_tasks():
    with pytest.raises(ValueError, match="inpainting models only"):
        ModelConfig(
            name="x",
            kind="deblur",
            dirformer=DIRformerConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1),
            cpen=CPENConfig(n_resblocks=1),
            hole_fill="smooth",
        )


def test_fill_solved_on_the_hole_box_equals_the_whole_image_solve(monkeypatch):
    """Eagerly, the relaxations run on each hole's bounding box grown by HOLE_MARGIN; the answer is the
    whole-image solve's up to rounding (1.2e-4 measured after 100 CG steps). With a margin of 1 the
    crop's replicated border leaks into the biharmonic operator and the fill is off by 0.43."""
    import models.inpainting as inpainting

    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 96, 96, generator=g)
    mask = _hole(96, 96, (30, 50, 40, 70)) + _hole(96, 96, (80, 96, 0, 10))  # one inside, one at a corner
    cropped = smooth_fill(img * (1 - mask), mask)
    monkeypatch.setattr(inpainting, "_hole_box", lambda hole, margin: (0, 0, *hole.shape[-2:]))
    whole = smooth_fill(img * (1 - mask), mask)
    assert (cropped - whole).abs().max() <= 1e-3


def test_fill_of_an_image_does_not_depend_on_its_batch():
    """Each image is filled on its own hole box, so batching two photos with different holes gives each
    exactly the fill it gets alone (a union box would change the rounding of both)."""
    g = torch.Generator().manual_seed(1)
    img = torch.rand(2, 3, 64, 80, generator=g)
    mask = torch.cat([_hole(64, 80, (2, 20, 3, 30)), _hole(64, 80, (40, 64, 50, 80))])
    batch = smooth_fill(img * (1 - mask), mask)
    for i in range(2):
        alone = smooth_fill(img[i : i + 1] * (1 - mask[i : i + 1]), mask[i : i + 1])
        assert torch.equal(batch[i : i + 1], alone)


def test_empty_hole_returns_the_image():
    img = torch.rand(1, 3, 32, 32)
    assert torch.equal(smooth_fill(img, torch.zeros(1, 1, 32, 32)), img)


def test_the_network_fills_with_its_configured_biharmonic_steps(tmp_path):
    """The step count is part of the model: the DIRformer fills with `fill_biharmonic_iterations`, a
    checkpoint keeps it, and one written before the field existed loads with the 100 it was trained on."""
    import json

    from models import load_model, save_checkpoint
    from models.checkpoint import sidecar_path

    net = DiffIRS2(replace(get_preset("inpaint-fill-small"), fill_biharmonic_iterations=7)).eval()
    out, holed, mask = _fill_only(net, 2, 48, 64, (10, 40, 8, 50))
    assert torch.allclose(out, smooth_fill(holed, mask, 7), atol=1e-6)
    assert (out - smooth_fill(holed, mask)).abs().max() > 1e-3  # 7 steps is not the default 100

    path = save_checkpoint(net, tmp_path / "fill7")
    assert load_model(path).config.fill_biharmonic_iterations == 7
    meta = json.loads(sidecar_path(path).read_text())
    del meta["config"]["fill_biharmonic_iterations"]
    sidecar_path(path).write_text(json.dumps(meta))
    assert load_model(path).config.fill_biharmonic_iterations == 100


def test_negative_biharmonic_steps_are_refused():
    with pytest.raises(ValueError, match="fill_biharmonic_iterations"):
        replace(get_preset("inpaint-fill-small"), fill_biharmonic_iterations=-1)
