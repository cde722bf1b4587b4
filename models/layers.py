"""DIRformer building blocks: IPR-modulated transposed attention (DMTA) and gated FFN (DGFN).

Layout: the transformer body works on channels-last tensors of shape (B, H, W, C) ("NHWC"), so
that every per-pixel channel operation (layer norm, 1x1 convolutions, modulation) runs on
contiguous rows and the depth-wise 3x3 convolutions see a channels-last input (several times
faster than NCHW on CPUs). Module and parameter names mirror the official checkpoints exactly.

Two algebraic fusions keep the numbers of the official formulation (to float32 rounding) while
removing whole passes over the activations:

* LayerNorm affine + IPR scale/shift + the following 1x1 conv become one batched matmul with a
  per-sample weight:  W (xhat * (w*s) + (b*s + h)) = (W diag(w*s)) xhat + W (b*s + h).
* Softmax(A) @ v followed by `project_out` becomes one per-sample C x C matrix applied to v:
  P (blockdiag(A) v) = (P blockdiag(A)) v, with the residual added inside the same matmul.

Batch invariance: the per-sample vector products (IPR -> scale/shift, CPEN's MLP, the denoiser) and
convolutions of small samples are computed one sample at a time (`per_sample_linear`,
`sample_conv2d`), where the library would otherwise pick another kernel, and rounding, for a batch
than for one sample. What remains batch-dependent is stated (and measured) in the README.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import LayerNormType

LN_EPS = 1e-5
L2_EPS = 1e-12


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """A (B, C, H, W) view of an NHWC tensor (channels-last strides, no copy)."""
    return x.permute(0, 3, 1, 2)


def nchw_to_nhwc(x: torch.Tensor) -> torch.Tensor:
    """Contiguous NHWC tensor from an NCHW one (free when `x` is channels-last already)."""
    return x.permute(0, 2, 3, 1).contiguous()


def _widened(t: torch.Tensor) -> torch.Tensor:
    """`t` in at least float32, for sums of squares that overflow float16 (a no-op for float32)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


NATIVE_CONV_MAX_VALUES = 20480
"""PyTorch's CPU dispatch (`ConvParams::use_mkldnn`) runs a float32 convolution of ONE sample with at
most this many input values on its native kernel, and the same convolution on a batch on oneDNN:
two algorithms, two roundings (a few 1e-7 apart, enough to move a pixel by one 8-bit level)."""


def sample_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """`F.conv2d` whose result per sample does not depend on the batch it is in.

    A batch of small CPU samples (where a lone sample would take the native kernel, see
    `NATIVE_CONV_MAX_VALUES`) is convolved one sample at a time: exactly the call each sample
    would get alone. Small tensors only, so the loop costs little. A traced graph (export) records
    the plain convolution.
    """
    batch = x.shape[0]
    if (
        batch > 1
        and x.device.type == "cpu"
        and x[0].numel() <= NATIVE_CONV_MAX_VALUES
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
    ):
        return torch.cat(
            [F.conv2d(x[i : i + 1], weight, bias, stride, padding, dilation, groups) for i in range(batch)]
        )
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class SampleConv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters and keys) through `sample_conv2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            return super().forward(x)
        return sample_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def conv_pixel_shuffle_nhwc(x: torch.Tensor, conv: nn.Conv2d, factor: int = 2) -> torch.Tensor:
    """`pixel_shuffle(conv(x), factor)` for an NHWC `x`, returned as a contiguous NHWC tensor.

    The conv's output channels are reordered from (c, i, j) to (i, j, c), so every sub-pixel's
    channels come out as one contiguous run and the shuffle is a copy of whole rows of channels
    rather than the element-wise gather `F.pixel_shuffle` does on channels-last tensors.
    """
    r2 = factor * factor
    c = conv.weight.shape[0] // r2
    weight = conv.weight.reshape(c, r2, *conv.weight.shape[1:]).transpose(0, 1).reshape(conv.weight.shape)
    bias = None if conv.bias is None else conv.bias.reshape(c, r2).t().reshape(-1)
    y = sample_conv2d(nhwc_to_nchw(x), weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    b, _, h, w = y.shape
    y = y.permute(0, 2, 3, 1).reshape(b, h, w, factor, factor, c).permute(0, 1, 3, 2, 4, 5)
    return y.reshape(b, h * factor, w * factor, c)


def conv_nhwc(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Apply a 2-D convolution to an NHWC tensor and return NHWC."""
    out = sample_conv2d(nhwc_to_nchw(x), conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return nchw_to_nhwc(out)


class _NormParams(nn.Module):
    """Holds `weight` (and `bias`), so the keys read `normX.body.weight` as in the official code."""

    def __init__(self, dim: int, with_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None


class ChannelLayerNorm(nn.Module):
    """Per-pixel LayerNorm over channels; `bias_free` scales by 1/std without centring."""

    def __init__(self, dim: int, kind: LayerNormType) -> None:
        super().__init__()
        self.kind = kind
        self.dim = dim
        self.body = _NormParams(dim, with_bias=kind == "with_bias")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised NHWC tensor *without* the affine part (it is fused downstream)."""
        if self.kind == "with_bias":
            return F.layer_norm(x, (self.dim,), eps=LN_EPS)
        # Two passes (mean, then mean of squared deviations) rather than `x.var`: over a short
        # innermost dimension torch's var is a per-row Welford loop, ~9x slower on CPU (13 % of an
        # sr-x4 forward), with the same float32 rounding. Half precision squares in float32.
        centred = x - x.mean(dim=-1, keepdim=True)
        var = _widened(centred).square().mean(dim=-1, keepdim=True).to(x.dtype)
        return x * torch.rsqrt(var + LN_EPS)

    def modulation(self, scale: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (B, C) gain and offset equal to `LN affine` followed by `* s + h`."""
        gain = self.body.weight * scale
        offset = shift if self.body.bias is None else self.body.bias * scale + shift
        return gain, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain LayerNorm of an NHWC tensor (reference path; the blocks use the fused one)."""
        y = self.normalize(x) * self.body.weight
        return y if self.body.bias is None else y + self.body.bias


def modulated_pointwise(x_hat: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """1x1 conv of `x_hat * gain + offset` as one batched matmul (B, HW, Cin) -> (B, HW, Cout)."""
    b, h, w, c = x_hat.shape
    weight = conv.weight.reshape(conv.weight.shape[0], c)  # (Cout, Cin)
    per_sample = weight.unsqueeze(0) * gain.unsqueeze(1)  # (B, Cout, Cin)
    bias = per_sample_linear(offset, weight)  # (B, Cout), independent of the batch size
    if conv.bias is not None:
        bias = bias + conv.bias
    out = torch.baddbmm(bias.unsqueeze(1), x_hat.reshape(b, h * w, c), per_sample.transpose(1, 2))
    return out.reshape(b, h, w, -1)


def per_sample_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` of a (B, Cin) batch of vectors, computed as B separate one-row products.

    A plain matrix product picks its BLAS kernel, and so its rounding, by the number of rows: the
    IPR path (CPEN's MLP, the denoiser, the IPR -> scale/shift kernels) would give a sample other
    last bits in a batch of 2 than alone, and a pixel one level off after the 8-bit rounding. One
    (1, Cin) x (Cin, Cout) product per sample (a batched matmul) rounds the same at every batch
    size and position, and equals `F.linear` exactly at B = 1.
    """
    b = x.shape[0]
    rows = x.unsqueeze(1)
    w = weight.t().unsqueeze(0).expand(b, -1, -1)
    out = torch.bmm(rows, w) if bias is None else torch.baddbmm(bias.expand(b, 1, -1), rows, w)
    return out.squeeze(1)


class SampleLinear(nn.Linear):
    """`nn.Linear` (same parameters and keys) on (B, C) vectors whose result per sample does not
    depend on the batch it is in (`per_sample_linear`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_sample_linear(x, self.weight, self.bias)


def ipr_kernel(ipr_dim: int, channels: int) -> nn.Sequential:
    """Linear map IPR -> [scale | shift] with no bias (key `kernel.0.weight`, shape [2C, 256])."""
    return nn.Sequential(SampleLinear(ipr_dim, 2 * channels, bias=False))


def scale_shift(kernel: nn.Sequential, ipr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First half of `K(z)` scales, second half shifts (no `1 +` on the scale)."""
    scale, shift = kernel(ipr).chunk(2, dim=1)
    return scale, shift


def normalize_over_space(t: torch.Tensor) -> torch.Tensor:
    """Divide each channel of a (B, HW, C) tensor by its L2 norm over the HW pixels.

    Before q·kᵀ, as the official code does, so that the Gram matrix holds cosines: the raw sums
    over all pixels reach 1e5 at 1024² with trained weights, past float16's 65504. The norm is
    accumulated in float32; its floor is the official 1e-12 raised to the dtype's smallest normal
    number (1e-12 is 0 in float16), so an all-zero channel stays 0 instead of 0/0.
    """
    eps = max(L2_EPS, torch.finfo(t.dtype).tiny)
    # sqrt(sum of squares) instead of `linalg.vector_norm`, which is ~4x slower on CPU over the
    # strided pixel axis of a q/k slice. The floor goes under the root (the same value as flooring
    # the norm) so that an all-zero channel back-propagates 0, not 0 / sqrt(0) = NaN.
    norm = _widened(t).square().sum(dim=1, keepdim=True).clamp_min(eps * eps).sqrt()
    return t * norm.reciprocal().to(t.dtype)


class DMTA(nn.Module):
    """Dynamic multi-head transposed attention (attention over channels, per head)."""

    def __init__(self, dim: int, heads: int, ipr_dim: int, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.kernel = ipr_kernel(ipr_dim, dim)
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def residual(self, x: torch.Tensor, norm: ChannelLayerNorm, ipr: torch.Tensor) -> torch.Tensor:
        """`x + DMTA(LN(x), ipr)` for an NHWC `x`."""
        b, h, w, c = x.shape
        heads, d = self.heads, c // self.heads
        gain, offset = norm.modulation(*scale_shift(self.kernel, ipr))
        qkv = modulated_pointwise(norm.normalize(x), gain, offset, self.qkv)
        qkv = conv_nhwc(qkv, self.qkv_dwconv).reshape(b, h * w, 3 * c)
        q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
        q, k = normalize_over_space(q), normalize_over_space(k)
        gram = torch.stack(
            [q[..., i * d : (i + 1) * d].transpose(1, 2) @ k[..., i * d : (i + 1) * d] for i in range(heads)],
            dim=1,
        )  # (B, heads, d, d), cosines in [-1, 1]
        attn = torch.softmax(gram * self.temperature, dim=-1)
        # Fold the attention into project_out: M[:, head*d + j] = sum_i P[:, head*d + i] A[i, j].
        proj = self.project_out.weight.reshape(c, heads, d)
        mixing = torch.einsum("cni,bnij->bcnj", proj, attn).reshape(b, c, c)
        out = torch.baddbmm(x.reshape(b, h * w, c), v, mixing.transpose(1, 2))
        if self.project_out.bias is not None:
            out = out + self.project_out.bias
        return out.reshape(b, h, w, c)


class DGFN(nn.Module):
    """Dynamic gated feed-forward network: GELU(gate) * value after a depth-wise 3x3 conv."""

    def __init__(self, dim: int, hidden: int, ipr_dim: int, bias: bool) -> None:
        super().__init__()
        self.hidden = hidden
        self.project_in = nn.Conv2d(dim, 2 * hidden, 1, bias=bias)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)
        self.kernel = ipr_kernel(ipr_dim, dim)

    def residual(self, x: torch.Tensor, norm: ChannelLayerNorm, ipr: torch.Tensor) -> torch.Tensor:
        """`x + DGFN(LN(x), ipr)` for an NHWC `x`."""
        b, h, w, c = x.shape
        gain, offset = norm.modulation(*scale_shift(self.kernel, ipr))
        t = modulated_pointwise(norm.normalize(x), gain, offset, self.project_in)
        t = conv_nhwc(t, self.dwconv)
        gated = F.gelu(t[..., : self.hidden]) * t[..., self.hidden :]
        weight = self.project_out.weight.reshape(c, self.hidden)
        flat = x.reshape(-1, c)
        if self.project_out.bias is not None:
            flat = flat + self.project_out.bias
        out = torch.addmm(flat, gated.reshape(-1, self.hidden), weight.t())
        return out.reshape(b, h, w, c)


class TransformerBlock(nn.Module):
    """`x + DMTA(x, z)` then `x + DGFN(x, z)`, both IPR-modulated."""

    def __init__(self, dim: int, heads: int, hidden: int, ipr_dim: int, norm: LayerNormType, bias: bool) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, norm)
        self.attn = DMTA(dim, heads, ipr_dim, bias)
        self.norm2 = ChannelLayerNorm(dim, norm)
        self.ffn = DGFN(dim, hidden, ipr_dim, bias)

    def forward(self, x: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        x = self.attn.residual(x, self.norm1, ipr)
        return self.ffn.residual(x, self.norm2, ipr)


class Downsample(nn.Module):
    """conv3x3 C -> C/2, pixel-unshuffle 2 -> 2C at half resolution (NHWC in and out)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = sample_conv2d(nhwc_to_nchw(x), self.body[0].weight, padding=1)
        return nchw_to_nhwc(F.pixel_unshuffle(y, 2))


class Upsample(nn.Module):
    """conv3x3 C -> 2C, pixel-shuffle 2 -> C/2 at double resolution (NHWC in and out)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_pixel_shuffle_nhwc(x, self.body[0])
