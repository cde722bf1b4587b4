"""Noise rules, determinism, any-size padding and presets."""

from __future__ import annotations

import pytest
import torch

from models import PRESETS, DiffIRS2, ModelConfig, get_preset, noise_for_seed
from models.config import CPENConfig, DIRformerConfig
from models.sizing import pad_to_multiple
from models.tasks import TASKS


def tiny(kind: str, scale: int = 1) -> ModelConfig:
    return ModelConfig(
        name=f"tiny-{kind}{scale}",
        kind=kind,  # type: ignore[arg-type]
        scale=scale,
        dirformer=DIRformerConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0 if kind == "inpaint" else 1),
        cpen=CPENConfig(n_resblocks=1),
    )


def test_seed_rule():
    assert torch.equal(noise_for_seed(7, 2), torch.randn((2, 256), generator=torch.Generator().manual_seed(7)))
    torch.manual_seed(7)
    assert torch.equal(noise_for_seed(7, 2), torch.randn((2, 256)))


@torch.no_grad()
def test_same_seed_same_output_and_no_global_rng_use():
    torch.manual_seed(0)
    net = DiffIRS2(tiny("deblur")).eval()
    lq = torch.rand(1, 3, 16, 24)
    state = torch.get_rng_state()
    a = net(lq, generator=torch.Generator().manual_seed(3))
    b = net(lq, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state), "forward must not touch the global RNG when given a generator"
    assert torch.equal(a, b)
    c = net(lq, noise=noise_for_seed(4))
    assert not torch.equal(a, c), "x_T must influence the output"


@torch.no_grad()
def test_forward_with_noise_draws_nothing():
    net = DiffIRS2(tiny("sr", 4)).eval()
    lq = torch.rand(2, 3, 8, 8)
    state = torch.get_rng_state()
    net(lq, noise=torch.zeros(2, 256))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(("kind", "scale"), [("deblur", 1), ("inpaint", 1), ("sr", 1), ("sr", 2), ("sr", 4)])
@pytest.mark.parametrize("size", [(1, 1), (13, 37), (33, 8)])
@torch.no_grad()
def test_any_size_restores_to_the_right_shape(kind, scale, size):
    cfg = tiny(kind, scale)
    net = DiffIRS2(cfg).eval()
    lq = torch.rand(1, cfg.image_channels, *size)
    out = net.forward_any_size(lq, noise=torch.zeros(1, 256))
    assert out.shape == (1, 3, size[0] * scale, size[1] * scale)
    assert torch.isfinite(out).all()


def test_padding_modes_match_numpy_and_torch():
    import numpy as np
    import torch.nn.functional as F

    x = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(1, 2, 5, 7)
    padded, size = pad_to_multiple(x, 8, "symmetric")
    assert size == (5, 7) and padded.shape[-2:] == (8, 8)
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 3), (0, 1)), mode="symmetric")
    assert np.array_equal(padded.numpy(), ref)
    padded, _ = pad_to_multiple(x, 8, "reflect")
    assert torch.equal(padded, F.pad(x, (0, 1, 0, 3), mode="reflect"))
    padded, _ = pad_to_multiple(x, 16, "reflect")  # pad larger than the image: torch refuses, we mirror on
    assert padded.shape[-2:] == (16, 16)
    assert torch.equal(padded[..., 5, :7], x[..., 3, :])


def test_presets_are_valid_and_tasks_point_at_presets():
    for name, cfg in PRESETS.items():
        assert cfg.name == name
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    for task in TASKS.values():
        assert task.config is get_preset(task.preset)
    assert TASKS["inpaint"].needs_mask and TASKS["sr-x4"].scale == 4


def test_size_multiples():
    assert get_preset("deblur").size_multiple == 8
    assert get_preset("srgan-x4").size_multiple == 8
    assert get_preset("srgan-x2").size_multiple == 16
    assert get_preset("realsr-x1").size_multiple == 32


def test_training_forward_has_gradients_into_prior():
    torch.manual_seed(0)
    net = DiffIRS2(tiny("deblur")).train()
    lq = torch.rand(2, 3, 16, 16)
    out, iprs = net.forward_train(lq, torch.rand(2, 256), noise=torch.randn(2, 256))
    (out.mean() + iprs[-1].mean()).backward()
    assert net.condition.E[0].weight.grad.abs().sum() > 0
    assert net.denoise.resmlp[0].weight.grad.abs().sum() > 0
    assert net.G.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("task", sorted(TASKS))
def test_shipped_presets_fit_the_size_budget(task):
    """Default models must stay <= 20 MB as float32 safetensors (issue: shipped defaults)."""
    with torch.device("meta"):
        net = DiffIRS2(TASKS[task].config)
    from models.checkpoint import canonical_state_dict

    size = sum(t.numel() * 4 for t in canonical_state_dict(net).values())
    assert size <= 20e6, f"{task}: {size / 1e6:.1f} MB"


@pytest.mark.parametrize("kind", ["with_bias", "bias_free"])
def test_channel_layer_norm_matches_the_reference_formula(kind):
    """WithBias: (x - mu) / sqrt(var + 1e-5) * w + b; BiasFree: x / sqrt(var + 1e-5) * w (not centred)."""
    from models.layers import ChannelLayerNorm

    torch.manual_seed(0)
    norm = ChannelLayerNorm(6, kind)  # type: ignore[arg-type]
    with torch.no_grad():
        norm.body.weight.uniform_(0.5, 1.5)
        if norm.body.bias is not None:
            norm.body.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 4, 6) * 3 + 1
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    if kind == "with_bias":
        expected = (x - mu) / torch.sqrt(var + 1e-5) * norm.body.weight + norm.body.bias
    else:
        expected = x / torch.sqrt(var + 1e-5) * norm.body.weight
    assert torch.allclose(norm(x), expected, atol=1e-5)
    scale, shift = torch.rand(2, 6), torch.rand(2, 6)
    gain, offset = norm.modulation(scale, shift)
    fused = norm.normalize(x) * gain[:, None, None] + offset[:, None, None]
    assert torch.allclose(fused, expected * scale[:, None, None] + shift[:, None, None], atol=1e-5)


@pytest.mark.parametrize("factor, bias", [(2, True), (2, False), (3, True)])
def test_conv_pixel_shuffle_nhwc_is_conv_then_pixel_shuffle(factor, bias):
    """The channel-reordered conv + row shuffle equals `pixel_shuffle(conv(x))` exactly, NHWC out."""
    import torch.nn.functional as F
    from torch import nn

    from models.layers import conv_pixel_shuffle_nhwc, nchw_to_nhwc, nhwc_to_nchw

    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7 * factor * factor, 3, padding=1, bias=bias)
    x = torch.randn(2, 9, 11, 5)
    expected = nchw_to_nhwc(F.pixel_shuffle(conv(nhwc_to_nchw(x)), factor))
    got = conv_pixel_shuffle_nhwc(x, conv, factor)
    assert got.shape == (2, 9 * factor, 11 * factor, 7) and got.is_contiguous()
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_bias_free_norm_keeps_a_float16_outlier_finite():
    """A pixel whose deviation squares past float16's 65504 (300² = 9e4) still normalises: the squares are
    summed in float32, so the variance (300²/8 ≈ 1.1e4) fits and the output is the float32 one."""
    from models.layers import ChannelLayerNorm

    norm = ChannelLayerNorm(8, "bias_free")
    x = torch.zeros(1, 1, 1, 8)
    x[..., 0] = 300.0
    want = norm.normalize(x)
    got = norm.normalize(x.half())
    assert torch.isfinite(got).all()
    assert torch.allclose(got.float(), want, rtol=2e-3, atol=0)


def test_an_all_zero_attention_channel_stays_zero_with_a_finite_gradient():
    """q/k channels are divided by their norm over the pixels; a channel that is 0 everywhere must give 0
    (not 0/0) and back-propagate a finite gradient (a floored sqrt(0) gives NaN in training)."""
    from models.layers import normalize_over_space

    t = torch.randn(2, 10, 4)
    t[:, :, 1] = 0
    t.requires_grad_(True)
    out = normalize_over_space(t)
    assert torch.equal(out[:, :, 1], torch.zeros(2, 10))
    assert torch.allclose(out[:, :, 0].norm(dim=1), torch.ones(2), atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(t.grad).all()
