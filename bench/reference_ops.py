"""The official DiffIR forward's *operation sequence*, re-expressed over our modules' weights.

Used only as the like-for-like baseline of `bench/speed.py`: same weights, same maths, but the
op sequence and memory layout of the upstream implementation (NCHW everywhere; LayerNorm on a
strided (B, HW, C) view, with mean/var reduced across the stride-HW axis; modulation, q/k
L2-normalisation, attention and projections as separate ops). Written from the reference
description of the official code (commit 293f86c), not copied from upstream code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.diffir import DiffIRS2
from models.layers import TransformerBlock


def _layer_norm(x: torch.Tensor, norm) -> torch.Tensor:
    b, c, h, w = x.shape
    seq = x.flatten(2).transpose(1, 2)  # (B, HW, C) strided view, as einops gives upstream
    var = seq.var(-1, keepdim=True, unbiased=False)
    if norm.body.bias is None:
        out = seq / torch.sqrt(var + 1e-5) * norm.body.weight
    else:
        mu = seq.mean(-1, keepdim=True)
        out = (seq - mu) / torch.sqrt(var + 1e-5) * norm.body.weight + norm.body.bias
    return out.transpose(1, 2).reshape(b, c, h, w)


def _modulate(x: torch.Tensor, kernel, ipr: torch.Tensor) -> torch.Tensor:
    k = kernel(ipr).view(-1, 2 * x.shape[1], 1, 1)
    scale, shift = k.chunk(2, dim=1)
    return x * scale + shift


def _block(blk: TransformerBlock, x: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
    a = blk.attn
    b, c, h, w = x.shape
    y = _modulate(_layer_norm(x, blk.norm1), a.kernel, ipr)
    qkv = F.conv2d(F.conv2d(y, a.qkv.weight), a.qkv_dwconv.weight, padding=1, groups=3 * c)
    q, k, v = qkv.chunk(3, dim=1)
    n = a.heads
    q = F.normalize(q.reshape(b, n, c // n, h * w), dim=-1)
    k = F.normalize(k.reshape(b, n, c // n, h * w), dim=-1)
    v = v.reshape(b, n, c // n, h * w)
    attn = (q @ k.transpose(-2, -1) * a.temperature).softmax(dim=-1)
    out = (attn @ v).reshape(b, c, h, w)
    x = x + F.conv2d(out, a.project_out.weight)
    f = blk.ffn
    y = _modulate(_layer_norm(x, blk.norm2), f.kernel, ipr)
    t = F.conv2d(F.conv2d(y, f.project_in.weight), f.dwconv.weight, padding=1, groups=2 * f.hidden)
    g, val = t.chunk(2, dim=1)
    return x + F.conv2d(F.gelu(g) * val, f.project_out.weight)


def _stage(blocks, x, ipr):
    for blk in blocks:
        x = _block(blk, x, ipr)
    return x


def reference_forward(net: DiffIRS2, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Deblur/inpaint variants (no SR head): what the benchmark times as "official-style eager"."""
    g = net.G
    ipr = net.prior(lq, noise)
    x = F.conv2d(lq, g.patch_embed.proj.weight, padding=1)
    e1 = _stage(g.encoder_level1, x, ipr)
    e2 = _stage(g.encoder_level2, F.pixel_unshuffle(F.conv2d(e1, g.down1_2.body[0].weight, padding=1), 2), ipr)
    e3 = _stage(g.encoder_level3, F.pixel_unshuffle(F.conv2d(e2, g.down2_3.body[0].weight, padding=1), 2), ipr)
    lat = _stage(g.latent, F.pixel_unshuffle(F.conv2d(e3, g.down3_4.body[0].weight, padding=1), 2), ipr)
    d3 = torch.cat([F.pixel_shuffle(F.conv2d(lat, g.up4_3.body[0].weight, padding=1), 2), e3], 1)
    d3 = _stage(g.decoder_level3, F.conv2d(d3, g.reduce_chan_level3.weight), ipr)
    d2 = torch.cat([F.pixel_shuffle(F.conv2d(d3, g.up3_2.body[0].weight, padding=1), 2), e2], 1)
    d2 = _stage(g.decoder_level2, F.conv2d(d2, g.reduce_chan_level2.weight), ipr)
    d1 = torch.cat([F.pixel_shuffle(F.conv2d(d2, g.up2_1.body[0].weight, padding=1), 2), e1], 1)
    d1 = _stage(g.decoder_level1, d1, ipr)
    if net.config.kind == "inpaint":
        return F.conv2d(d1, g.output.weight, padding=1)
    return F.conv2d(_stage(g.refinement, d1, ipr), g.output.weight, padding=1) + lq
