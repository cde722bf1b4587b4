"""Training losses: L1, the inpainting known/missing-weighted L1, L_diff, and the optional GAN and
perceptual terms of the official recipes.

The perceptual loss needs VGG19 weights; nothing is ever downloaded, so it is only available when
the user passes a local file (a torchvision-style `features.N.weight` state dict, `.pth` read with
`weights_only=True`, or `.safetensors`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm


def l1(out: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return (out - gt).abs().mean()


def l2(out: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean squared error: its minimiser is the conditional mean, the PSNR-optimal output."""
    return (out - gt).square().mean()


def masked_l1(
    out: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, weight_known: float, weight_missing: float
) -> torch.Tensor:
    """Per-pixel L1 weighted by `weight_known` outside and `weight_missing` inside the hole, mean over all
    pixels (LaMa; the official DiffIR weights are 10 / 0)."""
    weights = weight_known * (1 - mask) + weight_missing * mask
    return ((out - gt).abs() * weights).mean()


def masked_l1_l2(
    out: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, weight_known: float, weight_missing: float
) -> torch.Tensor:
    """`masked_l1` outside the hole and squared error inside it, scaled by 1/0.05 so that its gradient equals
    L1's at an error of 0.025: larger errors pull harder than under L1, smaller ones less."""
    diff = out - gt
    known = (diff.abs() * (1 - mask)).mean()
    hole = (diff.square() * mask).mean() / 0.05
    return weight_known * known + weight_missing * hole


def l_diff(ipr_est: torch.Tensor, ipr_target: torch.Tensor) -> torch.Tensor:
    """L1 between the final estimated IPR and the (detached) stage-1 teacher IPR."""
    return (ipr_est - ipr_target.detach()).abs().mean()


# --- discriminators ------------------------------------------------------------------------------
class UNetDiscriminatorSN(nn.Module):
    """U-Net discriminator with spectral normalisation and skip connections (Real-ESRGAN design):
    a per-pixel realness map, 64 base features."""

    def __init__(self, in_channels: int = 3, feats: int = 64) -> None:
        super().__init__()
        sn = spectral_norm
        self.conv0 = nn.Conv2d(in_channels, feats, 3, 1, 1)
        self.down = nn.ModuleList(
            [sn(nn.Conv2d(feats * m, feats * 2 * m, 4, 2, 1, bias=False)) for m in (1, 2, 4)]
        )  # 64->128->256->512
        self.up = nn.ModuleList(
            [sn(nn.Conv2d(feats * m, feats * m // 2, 3, 1, 1, bias=False)) for m in (8, 4, 2)]
        )  # 512->256->128->64
        self.extra = nn.ModuleList([sn(nn.Conv2d(feats, feats, 3, 1, 1, bias=False)) for _ in range(2)])
        self.out = nn.Conv2d(feats, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        skips = [act(self.conv0(x))]
        for conv in self.down:
            skips.append(act(conv(skips[-1])))
        y = skips.pop()
        for conv in self.up:
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            y = act(conv(y)) + skips.pop()
        for conv in self.extra:
            y = act(conv(y))
        return self.out(y)


class NLayerDiscriminator(nn.Module):
    """PatchGAN (pix2pixHD style), 4 strided layers; returns the logits and the intermediate
    activations (for LaMa's feature-matching loss)."""

    def __init__(self, in_channels: int = 3, feats: int = 64, n_layers: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, feats, 4, 2, 2), nn.LeakyReLU(0.2))]
        ch = feats
        for _ in range(1, n_layers):
            nxt = min(ch * 2, 512)
            layers.append(nn.Sequential(nn.Conv2d(ch, nxt, 4, 2, 2), nn.BatchNorm2d(nxt), nn.LeakyReLU(0.2)))
            ch = nxt
        nxt = min(ch * 2, 512)
        layers.append(nn.Sequential(nn.Conv2d(ch, nxt, 4, 1, 2), nn.BatchNorm2d(nxt), nn.LeakyReLU(0.2)))
        layers.append(nn.Conv2d(nxt, 1, 4, 1, 2))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return x, feats[:-1]


def vanilla_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def vanilla_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def nonsaturating_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits).mean()


def r1_d_loss(
    disc: NLayerDiscriminator, real: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor, gamma: float = 0.001
) -> torch.Tensor:
    """LaMa's discriminator loss: softplus on real + R1 penalty, fakes count as real outside the hole."""
    real = real.detach().requires_grad_(True)
    real_logits, _ = disc(real)
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    penalty = grad.pow(2).flatten(1).sum(1).mean() * gamma
    fake_logits, _ = disc(fake.detach())
    m = F.interpolate(mask, size=fake_logits.shape[-2:], mode="nearest")
    fake_term = F.softplus(fake_logits) * m + F.softplus(-fake_logits) * (1 - m)
    return F.softplus(-real_logits).mean() + penalty + fake_term.mean()


def feature_matching(fake_feats: list[torch.Tensor], real_feats: list[torch.Tensor]) -> torch.Tensor:
    return sum(F.mse_loss(f, r.detach()) for f, r in zip(fake_feats, real_feats)) / max(1, len(fake_feats))


# --- perceptual --------------------------------------------------------------------------------
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
# Indices (in `features`) of conv1_2, conv2_2, conv3_4, conv4_4, conv5_4: features taken *before* ReLU.
VGG_LAYERS = {"conv1_2": 2, "conv2_2": 7, "conv3_4": 16, "conv4_4": 25, "conv5_4": 34}
VGG_WEIGHTS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}


class PerceptualLoss(nn.Module):
    """VGG19 pre-ReLU feature L1 (BasicSR settings), from a local weights file only."""

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(ch, int(v), 3, padding=1), nn.ReLU()]
                ch = int(v)
        self.features = nn.Sequential(*layers)
        path = Path(weights_path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = {k: v for k, v in sd.items() if k.startswith("features.") and int(k.split(".")[1]) < len(layers)}
        self.load_state_dict(sd, strict=True)
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def _features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = (x - self.mean) / self.std
        out, last = {}, max(VGG_LAYERS.values())
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG_LAYERS.values():
                out[i] = x
            if i == last:
                break
        return out

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        fp, fg = self._features(pred), self._features(gt.detach())
        return sum(VGG_WEIGHTS[n] * (fp[i] - fg[i]).abs().mean() for n, i in VGG_LAYERS.items())


def maybe_perceptual(weights_path: str | None) -> PerceptualLoss | None:
    """The perceptual term when a local VGG19 file is given; otherwise a clear message and None."""
    if not weights_path:
        print(
            "[training] perceptual loss off: pass --loss.vgg_weights /path/to/vgg19.pth (nothing is downloaded)",
            flush=True,
        )
        return None
    if not Path(weights_path).is_file():
        raise FileNotFoundError(f"VGG19 weights file not found: {weights_path}")
    return PerceptualLoss(weights_path)
