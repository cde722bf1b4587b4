"""DIRformer: the IPR-modulated 4-level transformer U-net (module `G`) with its task heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig
from models.inpainting import smooth_fill
from models.layers import (
    Downsample,
    TransformerBlock,
    Upsample,
    conv_nhwc,
    conv_pixel_shuffle_nhwc,
    nchw_to_nhwc,
    nhwc_to_nchw,
    sample_conv2d,
)


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)


class Blocks(nn.ModuleList):
    """A stage of transformer blocks sharing one IPR (keys `<stage>.<i>.*`)."""

    def forward(self, x: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for block in self:
            x = block(x, ipr)
        return x


def _sr_tail(width: int) -> nn.Sequential:
    """conv -> PS(2) -> conv -> PS(2) -> conv; keys `tail.0.0`, `tail.0.2`, `tail.1`."""
    upsampler = nn.Sequential(
        nn.Conv2d(width, 4 * width, 3, padding=1),
        nn.PixelShuffle(2),
        nn.Conv2d(width, 4 * width, 3, padding=1),
        nn.PixelShuffle(2),
    )
    return nn.Sequential(upsampler, nn.Conv2d(width, 3, 3, padding=1))


class DIRformer(nn.Module):
    """Restormer-style U-net; `forward(lq, ipr)` takes the network input at LQ resolution.

    The LQ is pixel-unshuffled to the working resolution (SR x2/x1) inside, and the task's global
    residual (blurry input for deblur, nearest-upsampled LQ for SR) is added inside, so the
    module maps exactly what the official `G` maps.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        g = config.dirformer
        widths, heads, ipr = config.level_widths, g.heads, config.ipr_dim

        def stage(width: int, n_heads: int, count: int) -> Blocks:
            return Blocks(
                TransformerBlock(width, n_heads, g.ffn_hidden(width), ipr, g.layer_norm, g.bias) for _ in range(count)
            )

        self.patch_embed = PatchEmbed(config.dirformer_in_channels, g.dim)
        self.encoder_level1 = stage(widths[0], heads[0], g.num_blocks[0])
        self.down1_2 = Downsample(widths[0])
        self.encoder_level2 = stage(widths[1], heads[1], g.num_blocks[1])
        self.down2_3 = Downsample(widths[1])
        self.encoder_level3 = stage(widths[2], heads[2], g.num_blocks[2])
        self.down3_4 = Downsample(widths[2])
        self.latent = stage(widths[3], heads[3], g.num_blocks[3])
        self.up4_3 = Upsample(widths[3])
        self.reduce_chan_level3 = nn.Conv2d(widths[3], widths[2], 1, bias=g.bias)
        self.decoder_level3 = stage(widths[2], heads[2], g.num_blocks[2])
        self.up3_2 = Upsample(widths[2])
        self.reduce_chan_level2 = nn.Conv2d(widths[2], widths[1], 1, bias=g.bias)
        self.decoder_level2 = stage(widths[1], heads[1], g.num_blocks[1])
        self.up2_1 = Upsample(widths[1])
        # Level 1 of the decoder keeps 2*dim channels (no reduction) with the level-1 head count.
        self.decoder_level1 = stage(widths[1], heads[0], g.num_blocks[0])
        if config.kind != "inpaint":
            self.refinement = stage(widths[1], heads[0], g.num_refinement_blocks)
        if config.kind == "sr":
            self.tail = _sr_tail(widths[1])
        else:
            self.output = nn.Conv2d(widths[1], 3, 3, padding=1, bias=g.bias)

    def forward(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.hole_fill == "smooth":
            mask = lq[:, 3:4]
            lq = torch.cat([smooth_fill(lq[:, :3], mask, cfg.fill_biharmonic_iterations), mask], dim=1)
        x = F.pixel_unshuffle(lq, cfg.lq_unshuffle) if cfg.lq_unshuffle > 1 else lq
        x = nchw_to_nhwc(x.contiguous(memory_format=torch.channels_last))
        e1 = self.encoder_level1(conv_nhwc(x, self.patch_embed.proj), ipr)
        e2 = self.encoder_level2(self.down1_2(e1), ipr)
        e3 = self.encoder_level3(self.down2_3(e2), ipr)
        latent = self.latent(self.down3_4(e3), ipr)
        d3 = self._merge(self.up4_3(latent), e3, self.reduce_chan_level3)
        d3 = self.decoder_level3(d3, ipr)
        d2 = self._merge(self.up3_2(d3), e2, self.reduce_chan_level2)
        d2 = self.decoder_level2(d2, ipr)
        d1 = self.decoder_level1(torch.cat([self.up2_1(d2), e1], dim=-1), ipr)
        if cfg.kind == "inpaint":
            out = nhwc_to_nchw(conv_nhwc(d1, self.output))
            return (out + lq[:, :3] if cfg.hole_fill == "smooth" else out).contiguous()
        feat = self.refinement(d1, ipr)
        if cfg.kind == "deblur":
            return (nhwc_to_nchw(conv_nhwc(feat, self.output)) + lq).contiguous()
        y = conv_pixel_shuffle_nhwc(conv_pixel_shuffle_nhwc(feat, self.tail[0][0]), self.tail[0][2])
        y = sample_conv2d(nhwc_to_nchw(y), self.tail[1].weight, self.tail[1].bias, padding=1)
        # Nearest-neighbour upsampling by an integer factor replicates each LQ pixel s x s times.
        base = lq if cfg.scale == 1 else F.interpolate(lq, scale_factor=cfg.scale, mode="nearest")
        return (y + base).contiguous()

    @staticmethod
    def _merge(up: torch.Tensor, skip: torch.Tensor, reduce: nn.Conv2d) -> torch.Tensor:
        """Concatenate [upsampled, skip] on channels and reduce with a 1x1 conv (as a matmul)."""
        cat = torch.cat([up, skip], dim=-1)
        weight = reduce.weight.reshape(reduce.weight.shape[0], -1)
        return F.linear(cat, weight, reduce.bias)
