"""Our networks reproduce the official implementation's numbers from official weights (≤ 1e-6 relative)."""

from __future__ import annotations

import pytest
import torch

from models import load_model, load_stage1_model
from models.diffusion import make_schedule

from .conftest import FixtureSet, rel_err

TOL = 1e-6


@pytest.fixture(scope="module")
def loaded(fixture_set: FixtureSet):
    s2 = load_model(fixture_set.s2_weights, variant=fixture_set.s2_config)
    s1 = load_stage1_model(fixture_set.s1_weights, variant=fixture_set.s1_config)
    return fixture_set, s2, s1


@torch.no_grad()
def test_condition_vector(loaded):
    fx, s2, _ = loaded
    assert rel_err(s2.condition_vector(fx.data["lq"]), fx.data["condition"]) <= TOL


@torch.no_grad()
def test_dirformer_with_fixed_ipr(loaded):
    fx, s2, _ = loaded
    assert rel_err(s2.restore(fx.data["lq"], fx.data["ipr_fixed"]), fx.data["G_out_ipr_fixed"]) <= TOL


@torch.no_grad()
def test_every_reverse_step(loaded):
    fx, s2, _ = loaded
    d = fx.data
    records = s2.prior_trajectory(d["lq"], d["x_T"])
    assert [r.t for r in records] == d["steps_t"][:, 0].tolist() == [3, 2, 1, 0]
    for i, rec in enumerate(records):
        assert rel_err(rec.z_in, d["steps_x_in"][i]) <= TOL
        assert rel_err(rec.x0_pred, d["steps_x0_pred"][i]) <= TOL
        assert rel_err(rec.z_out, d["steps_x_out"][i]) <= TOL
    assert rel_err(records[-1].z_out, d["ipr_s2"]) <= TOL


@torch.no_grad()
def test_stage2_output_given_noise(loaded):
    fx, s2, _ = loaded
    d = fx.data
    assert rel_err(s2(d["lq"], noise=d["x_T"]), d["out_s2"]) <= TOL
    assert rel_err(s2(d["lq"], noise=torch.zeros_like(d["x_T"])), d["out_s2_given_x_T_zero"]) <= TOL


@torch.no_grad()
def test_seed_rule_reproduces_official_draw(loaded):
    """Seeding our generator with the fixture's forward seed yields the official x_T and output."""
    fx, s2, _ = loaded
    d = fx.data
    seed = d["meta"]["seeds"]["forward"]
    gen = torch.Generator().manual_seed(seed)
    assert torch.equal(torch.randn((d["lq"].shape[0], 256), generator=torch.Generator().manual_seed(seed)), d["x_T"])
    assert rel_err(s2(d["lq"], generator=gen), d["out_s2"]) <= TOL


@torch.no_grad()
def test_stage1(loaded):
    fx, _, s1 = loaded
    d = fx.data
    assert rel_err(s1.ipr(d["lq"], d["gt"]), d["ipr_s1"]) <= TOL
    assert rel_err(s1(d["lq"], d["gt"]), d["out_s1"]) <= TOL


@torch.no_grad()
def test_training_mode_forward(loaded):
    fx, s2, _ = loaded
    d = fx.data
    image, iprs = s2.forward_train(d["lq"], d["ipr_s1"], noise=d["train_noise"])
    assert len(iprs) == 4
    assert rel_err(s2.diffusion.diffuse_to_last_step(d["ipr_s1"], d["train_noise"]), d["train_x_T"]) <= TOL
    for ours, theirs in zip(iprs, d["train_pred_ipr_list"]):
        assert rel_err(ours, theirs) <= TOL
    assert rel_err(image, d["train_out"]) <= TOL


def test_schedule_buffers(fixture_set: FixtureSet):
    ours = make_schedule(fixture_set.s2_config.diffusion)
    for name, theirs in fixture_set.data["schedule"].items():
        assert torch.allclose(ours[name], theirs, rtol=1e-6, atol=0), name


def test_inpainting_composite_fixture():
    """inpainted_s2 = mask * out + (1 - mask) * image, with our helper."""
    from models.inpainting import composite

    from .conftest import FixtureSet

    fx = FixtureSet("inpaint-tiny")
    d = fx.data
    assert torch.allclose(composite(d["image"], d["mask"], d["out_s2"]), d["inpainted_s2"], atol=1e-6)
