"""float16 and bfloat16 forward passes (run on the CPU, which does both) stay finite and near float32.

What CUDA runs with `DIFFIR_PRECISION=fp16|bf16` and AMP training, checked without a GPU: the
shipped weights, the attention where its raw q·kᵀ sums leave float16's range, and the inpainting
pre-fill, whose float32 epsilons are 0 in float16.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from models import DiffIRS2, load_model
from models.inpainting import network_input, smooth_fill
from models.layers import conv_nhwc, modulated_pointwise, nchw_to_nhwc, scale_shift
from models.tasks import get_task

FP16_MAX = torch.finfo(torch.float16).max
HALF = (torch.float16, torch.bfloat16)
# Worst differences from float32 measured on these inputs: float16 ~1e-3, bfloat16 ~9e-3 (8 mantissa bits).
ATOL = {torch.float16: 5e-3, torch.bfloat16: 3e-2}


@pytest.fixture(scope="module")
def shipped() -> Iterator[dict[str, DiffIRS2]]:
    """The shipped networks; one thread (half precision is slow on CPUs, and cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {name: load_model(get_task(name).default_checkpoint_path()).eval() for name in ("deblur", "inpaint")}
    torch.set_num_threads(threads)


def _image(size: int) -> torch.Tensor:
    """A smooth deterministic image (bicubic upscaling of 16x16 noise) in [0, 1]."""
    small = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return F.interpolate(small, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _noise() -> torch.Tensor:
    return torch.randn(1, 256, generator=torch.Generator().manual_seed(1))


def _cast(net: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return copy.deepcopy(net).to(dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@torch.no_grad()
def test_attention_where_the_raw_gram_leaves_float16_range(shipped, dtype):
    """The first deblur attention block at 128² with its IPR scaled by 8: the q·kᵀ sums over all
    pixels peak near 9e4, what the shipped weights give at 1024² (the peak grows with the pixel
    count and with the square of the activations)."""
    net = shipped["deblur"]
    block = net.G.encoder_level1[0]
    img = _image(128)
    x = conv_nhwc(nchw_to_nhwc(img), net.G.patch_embed.proj)
    ipr = net.prior(img, _noise()) * 8
    # precondition: the raw Gram (what the attention summed before normalising) overflows float16
    c = x.shape[-1]
    gain, offset = block.norm1.modulation(*scale_shift(block.attn.kernel, ipr))
    qkv = conv_nhwc(modulated_pointwise(block.norm1.normalize(x), gain, offset, block.attn.qkv), block.attn.qkv_dwconv)
    q, k = qkv.reshape(1, -1, 3 * c)[..., :c], qkv.reshape(1, -1, 3 * c)[..., c : 2 * c]
    assert (q.transpose(1, 2) @ k).abs().max() > FP16_MAX

    ref = block.attn.residual(x, block.norm1, ipr)
    low = _cast(block, dtype)
    out = low.attn.residual(x.to(dtype), low.norm1, ipr.to(dtype)).float()
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() / ref.abs().max() < ATOL[dtype]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@torch.no_grad()
def test_shipped_deblur_in_half_precision(shipped, dtype):
    lq = _image(32)
    ref = shipped["deblur"](lq, noise=_noise())
    out = _cast(shipped["deblur"], dtype)(lq.to(dtype), noise=_noise().to(dtype)).float()
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() < ATOL[dtype]


def _hole(size: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 6 : size // 2, size // 3 : 3 * size // 4] = 1
    return mask


@pytest.mark.parametrize("dtype", HALF, ids=str)
@torch.no_grad()
def test_shipped_inpaint_in_half_precision(shipped, dtype):
    lq, mask = _image(32), _hole(32)
    x = network_input(lq, mask)
    ref = shipped["inpaint"](x, noise=_noise())
    out = _cast(shipped["inpaint"], dtype)(x.to(dtype), noise=_noise().to(dtype)).float()
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() < ATOL[dtype]


@pytest.mark.parametrize("hole", ["hole", "no hole"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_smooth_fill_in_half_precision(dtype, hole):
    """An all-zero mask is what the service's warm-up sends; its CG steps divide 0 by the floor."""
    lq = _image(64)
    mask = _hole(64) if hole == "hole" else torch.zeros(1, 1, 64, 64)
    ref = smooth_fill(lq, mask)
    out = smooth_fill(lq.to(dtype), mask.to(dtype))
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < ATOL[dtype]
    assert torch.equal(out.float() * (1 - mask), lq.to(dtype).float() * (1 - mask)), "known pixels changed"
