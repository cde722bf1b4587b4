"""Checkpoint formats: official containers, our safetensors + sidecar, strictness, inference."""

from __future__ import annotations

import json

import pytest
import torch

from models import DiffIRS1, DiffIRS2, load_model, load_stage1_model, save_checkpoint
from models.checkpoint import CheckpointError, infer_variant, read_sidecar

from .conftest import FixtureSet


@pytest.fixture(scope="module")
def deblur_fx() -> FixtureSet:
    return FixtureSet("deblur-tiny")


def _official_sd(fx: FixtureSet) -> dict[str, torch.Tensor]:
    return torch.load(fx.s2_weights, weights_only=True)


def _outputs(net: DiffIRS2, fx: FixtureSet) -> torch.Tensor:
    with torch.no_grad():
        return net(fx.data["lq"], noise=fx.data["x_T"])


@pytest.mark.parametrize("container", ["params_ema", "params", "bare", "lightning", "separate-aliases"])
def test_official_containers_load_identically(tmp_path, deblur_fx, container):
    sd = _official_sd(deblur_fx)
    if container == "params_ema":
        obj = {"params": {k: torch.zeros_like(v) for k, v in sd.items()}, "params_ema": sd}
    elif container == "params":
        obj = {"params": sd}
    elif container == "bare":
        obj = sd
    elif container == "lightning":
        obj = {
            "state_dict": {
                **{f"generator.{k}": v for k, v in sd.items()},
                **{f"generatorS1.{k}": torch.zeros(1) for k in list(sd)[:3]},
                "discriminator.model.0.weight": torch.zeros(2),
            },
            "epoch": 3,
        }
    else:  # written from GPU training: the aliases are separate (equal) tensors
        obj = {"params_ema": {k: v.clone() for k, v in sd.items()}}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    net = load_model(path, variant=deblur_fx.s2_config)
    assert not net.training
    assert torch.equal(
        _outputs(net, deblur_fx),
        _outputs(load_model(deblur_fx.s2_weights, variant=deblur_fx.s2_config), deblur_fx),
    )


def test_alias_mismatch_is_an_error(tmp_path, deblur_fx):
    sd = {k: v.clone() for k, v in _official_sd(deblur_fx).items()}
    key = next(k for k in sd if k.startswith("diffusion.model."))
    sd[key] += 1
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="aliased copy"):
        load_model(tmp_path / "bad.pth", variant=deblur_fx.s2_config)


def test_strict_loading_lists_missing_and_unexpected(tmp_path, deblur_fx):
    sd = dict(_official_sd(deblur_fx))
    del sd["G.output.weight"]
    sd["G.extra.weight"] = torch.zeros(3)
    torch.save({"params": sd}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "partial.pth", variant=deblur_fx.s2_config)
    assert "missing (1): G.output.weight" in str(err.value)
    assert "unexpected (1): G.extra.weight" in str(err.value)


class Payload:
    """An arbitrary class: unpickling it would run code of the file's choosing."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"params": {"G.x": Payload()}}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_model(tmp_path / "evil.pth", variant="deblur")


def test_non_tensor_values_are_refused(tmp_path):
    torch.save({"params": {"G.patch_embed.proj.weight": 3}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="not a tensor"):
        load_model(tmp_path / "odd.pth", variant="deblur")


def test_unknown_architecture_without_variant_is_a_clear_error(deblur_fx):
    with pytest.raises(CheckpointError, match="unknown S2 architecture"):
        load_model(deblur_fx.s2_weights)


def test_variant_inferred_from_shapes_and_ambiguity_reported():
    torch.manual_seed(0)
    with torch.device("meta"):
        deblur = DiffIRS2(__import__("models").get_preset("deblur"))
        sr4 = DiffIRS2(__import__("models").get_preset("srgan-x4"))
        sr1 = DiffIRS2(__import__("models").get_preset("realsr-x1"))
    from models.checkpoint import canonical_state_dict

    assert infer_variant(canonical_state_dict(deblur), "s2").name == "deblur"
    assert infer_variant(canonical_state_dict(sr1), "s2").name == "realsr-x1"
    with pytest.raises(CheckpointError, match=r"ambiguous.*srgan-x4.*realsr-x4"):
        infer_variant(canonical_state_dict(sr4), "s2")


def test_our_format_round_trips_exactly(tmp_path, deblur_fx):
    net = load_model(deblur_fx.s2_weights, variant=deblur_fx.s2_config)
    path = save_checkpoint(net, tmp_path / "mine", provenance={"source": "test"})
    assert path.suffix == ".safetensors"
    meta = read_sidecar(path)
    assert meta["variant"] == "deblur-tiny" and meta["stage"] == "s2" and meta["format_version"] == 1
    assert meta["provenance"] == {"source": "test"}
    again = load_model(path)
    for (k1, v1), (k2, v2) in zip(net.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert torch.equal(_outputs(again, deblur_fx), _outputs(net, deblur_fx))


def test_sha256_mismatch_and_missing_sidecar(tmp_path, deblur_fx):
    net = load_model(deblur_fx.s2_weights, variant=deblur_fx.s2_config)
    path = save_checkpoint(net, tmp_path / "m")
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["sha256"] = "0" * 64
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="sidecar"):
        load_model(path)


def test_stage_mismatch_and_wrong_variant_name(tmp_path, deblur_fx):
    s1 = load_stage1_model(deblur_fx.s1_weights, variant=deblur_fx.s1_config)
    path = save_checkpoint(s1, tmp_path / "s1")
    assert isinstance(load_stage1_model(path), DiffIRS1)
    with pytest.raises(CheckpointError, match="s1 checkpoint, expected s2"):
        load_model(path)
    with pytest.raises(CheckpointError, match="not 'deblur'"):
        load_stage1_model(path, variant="deblur")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")
