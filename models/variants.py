"""THE one place where every network preset is defined: the official variants and our own.

Presets are plain `ModelConfig` values. Official names follow the upstream task folders; our
small presets (trained by `training/` and shipped in `models/weights/`) are just more entries.
"""

from __future__ import annotations

from types import MappingProxyType

from models.config import CPENConfig, DIRformerConfig, ModelConfig

_DEBLUR_G = DIRformerConfig(dim=48, num_blocks=(3, 5, 6, 6), num_refinement_blocks=4, ffn_expansion_factor=2.0)
_INPAINT_G = DIRformerConfig(dim=52, num_blocks=(1, 1, 1, 9), num_refinement_blocks=0, ffn_expansion_factor=1.8)
_SR_G = DIRformerConfig(
    dim=64, num_blocks=(13, 1, 1, 1), num_refinement_blocks=13, ffn_expansion_factor=2.2, layer_norm="bias_free"
)


def _sr(name: str, scale: int) -> ModelConfig:
    return ModelConfig(name=name, kind="sr", scale=scale, dirformer=_SR_G, cpen=CPENConfig(n_resblocks=9))


_OFFICIAL = (
    ModelConfig(name="deblur", kind="deblur", dirformer=_DEBLUR_G, cpen=CPENConfig(n_resblocks=5)),
    ModelConfig(name="inpaint", kind="inpaint", dirformer=_INPAINT_G, cpen=CPENConfig(n_resblocks=5)),
    ModelConfig(
        name="inpaint-big",
        kind="inpaint",
        dirformer=DIRformerConfig(dim=52, num_blocks=(1, 1, 1, 20), num_refinement_blocks=0, ffn_expansion_factor=1.8),
        cpen=CPENConfig(n_resblocks=8),
    ),
    _sr("srgan-x2", 2),
    _sr("srgan-x4", 4),
    _sr("realsr-x1", 1),
    _sr("realsr-x2", 2),
    _sr("realsr-x4", 4),
)

# Our small presets for the shipped default models: the same architecture, sized so that a
# 512x512 output restores in well under 1.5 s on a 2-core CPU and trains on a CPU in hours.
_SMALL = (
    ModelConfig(
        name="deblur-small",
        kind="deblur",
        dirformer=DIRformerConfig(dim=16, num_blocks=(1, 2, 2, 2), num_refinement_blocks=1, heads=(1, 2, 4, 8)),
        cpen=CPENConfig(n_resblocks=2),
    ),
    ModelConfig(
        name="sr-x4-small",
        kind="sr",
        scale=4,
        dirformer=DIRformerConfig(
            dim=24, num_blocks=(4, 1, 1, 1), num_refinement_blocks=2, ffn_expansion_factor=2.2, layer_norm="bias_free"
        ),
        cpen=CPENConfig(n_resblocks=2),
    ),
    ModelConfig(
        name="inpaint-small",
        kind="inpaint",
        dirformer=DIRformerConfig(dim=16, num_blocks=(1, 2, 2, 3), num_refinement_blocks=0, ffn_expansion_factor=2.0),
        cpen=CPENConfig(n_resblocks=2),
    ),
    ModelConfig(
        name="inpaint-fill-small",
        kind="inpaint",
        dirformer=DIRformerConfig(dim=16, num_blocks=(1, 2, 2, 2), num_refinement_blocks=0, ffn_expansion_factor=2.0),
        cpen=CPENConfig(n_resblocks=2),
        hole_fill="smooth",
    ),
)

OFFICIAL_VARIANTS: tuple[str, ...] = tuple(c.name for c in _OFFICIAL)
PRESETS: MappingProxyType[str, ModelConfig] = MappingProxyType({c.name: c for c in _OFFICIAL + _SMALL})


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(PRESETS)}") from None
