"""The image-side objective shared by both stages: reconstruction L1 (known/missing weighted for
inpainting) plus the optional perceptual and adversarial terms, and the discriminator's loss.

The discriminator and the VGG network are held outside the module tree of the StepModule on
purpose: DDP must only see the generator's parameters in the generator step.
"""

from __future__ import annotations

import torch

from models.config import ModelConfig
from training import losses
from training.config import TrainConfig


class ImageObjective:
    def __init__(self, cfg: TrainConfig, mc: ModelConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.inpaint = mc.kind == "inpaint"
        self.percep = None
        if cfg.perceptual_weight > 0:
            self.percep = losses.maybe_perceptual(cfg.vgg_weights)
            self.percep = self.percep.to(device) if self.percep is not None else None
        self.disc: torch.nn.Module | None = None
        if cfg.gan_weight > 0:
            disc = losses.NLayerDiscriminator() if self.inpaint else losses.UNetDiscriminatorSN()
            torch.manual_seed(cfg.seed + 1)
            self.disc = disc.to(device)

    def generator_loss(self, out: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        gt = batch["gt"]
        if "mask" in batch:
            masked = losses.masked_l1_l2 if self.cfg.hole_loss == "l2" else losses.masked_l1
            rec = masked(out, gt, batch["mask"], self.cfg.weight_known, self.cfg.weight_missing)
        else:
            rec = (losses.l2 if self.cfg.pixel_loss == "l2" else losses.l1)(out, gt)
        loss, logs = rec, {"rec": rec.item()}
        if self.percep is not None:
            p = self.percep(out, gt)
            loss = loss + self.cfg.perceptual_weight * p
            logs["percep"] = p.item()
        if self.disc is not None:
            if self.inpaint:
                logits, feats = self.disc(out)
                g = losses.nonsaturating_g_loss(logits)
                if self.cfg.fm_weight > 0:
                    _, real_feats = self.disc(gt)
                    fm = losses.feature_matching(feats, real_feats)
                    loss = loss + self.cfg.fm_weight * fm
                    logs["fm"] = fm.item()
            else:
                g = losses.vanilla_g_loss(self.disc(out))
            loss = loss + self.cfg.gan_weight * g
            logs["g"] = g.item()
        return loss, logs

    def disc_loss(self, disc: torch.nn.Module, batch: dict[str, torch.Tensor], fake: torch.Tensor) -> torch.Tensor:
        if self.inpaint:
            return losses.r1_d_loss(disc, batch["gt"], fake, batch["mask"])
        return losses.vanilla_d_loss(disc(batch["gt"]), disc(fake.detach()))
