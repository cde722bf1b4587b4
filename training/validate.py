"""Periodic validation during training: fixed degraded crops of a folder, PSNR/SSIM, sample images.

The validation set is degraded once with a fixed seed per image, so numbers are comparable across
steps and across resumed runs. Stage 1 is validated with its GT-informed prior (an upper bound of
what stage 2 can reach); stage 2 with the real prior from a fixed noise seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.diffir import DiffIRS1
from models.inpainting import composite
from training.config import TrainConfig
from training.degradations import Degradation, network_input
from training.imageio import list_images, read_image, write_image
from training.metrics import all_metrics


class Validator:
    def __init__(self, cfg: TrainConfig, degradation: Degradation) -> None:
        mc = cfg.model_config()
        self.scale = mc.scale
        self.save_n = cfg.val_save
        mult = mc.size_multiple * mc.scale
        self.items = []
        for i, path in enumerate(list_images([cfg.val])[: cfg.val_images]):
            gt = read_image(path)
            h, w = gt.shape[-2:]
            ch = max(mult, min(cfg.val_crop, h) // mult * mult)
            cw = max(mult, min(cfg.val_crop, w) // mult * mult)
            y, x = (h - ch) // 2, (w - cw) // 2
            gt = gt[:, y : y + ch, x : x + cw].contiguous()
            deg = degradation.apply(gt, degradation.draw(np.random.default_rng([cfg.val_seed, i]), ch, cw))
            self.items.append((path.stem, network_input(deg.lq, deg.mask), gt, deg.mask))

    @torch.no_grad()
    def run(self, net: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        was_training = net.training
        net.eval()
        device = next(net.parameters()).device
        sums: dict[str, float] = {}
        for j, (name, lq, gt, mask) in enumerate(self.items):
            x, g = lq[None].to(device), gt[None].to(device)
            if isinstance(net, DiffIRS1):
                out = net(x, g)[0].cpu()
            else:
                out = net(x, generator=torch.Generator().manual_seed(0))[0].cpu()
            out = out.clamp(0, 1)
            if mask is not None:
                out = composite(gt, mask, out)
            for k, v in all_metrics(out, gt, border=self.scale).items():
                sums[k] = sums.get(k, 0.0) + v
            if j < self.save_n:
                d = out_dir / "val" / f"{step:07d}"
                write_image(d / f"{name}_out.png", out)
                if step == 0 or not (out_dir / "val" / f"{name}_lq.png").exists():
                    write_image(out_dir / "val" / f"{name}_lq.png", lq[:3])
                    write_image(out_dir / "val" / f"{name}_gt.png", gt)
        net.train(was_training)
        return {f"val_{k}": v / max(1, len(self.items)) for k, v in sums.items()}
