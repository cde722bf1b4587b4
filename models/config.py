"""Typed, frozen configuration of a DiffIR network.

A variant is *data*: one `ModelConfig` fully determines the module tree, its state-dict keys and
shapes, and the input/output conventions (padding multiple, CPEN input layout). Everything that
differs between the official task folders is expressed here instead of in copies of the code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Kind = Literal["deblur", "inpaint", "sr"]
LayerNormType = Literal["with_bias", "bias_free"]
HoleFill = Literal["zero", "smooth"]


@dataclass(frozen=True)
class DIRformerConfig:
    """The restoration transformer (module `G`)."""

    dim: int
    num_blocks: tuple[int, int, int, int]
    num_refinement_blocks: int
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.0
    layer_norm: LayerNormType = "with_bias"
    bias: bool = False

    def ffn_hidden(self, width: int) -> int:
        # The official code truncates the float product (52 * 1.8 -> 93).
        return int(width * self.ffn_expansion_factor)


@dataclass(frozen=True)
class CPENConfig:
    """The compact prior extraction network; the IPR width is 4 * n_feats (256 officially)."""

    n_resblocks: int
    n_feats: int = 64


@dataclass(frozen=True)
class DiffusionConfig:
    """The 4-step IPR diffusion (sqrt-linear beta schedule, x0 prediction, no reverse noise)."""

    timesteps: int = 4
    linear_start: float = 0.1
    linear_end: float = 0.99
    n_denoise_res: int = 1


@dataclass(frozen=True)
class ModelConfig:
    """One complete DiffIR variant: task kind, scale and the three sub-network configs."""

    name: str
    kind: Kind
    dirformer: DIRformerConfig
    cpen: CPENConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    scale: int = 1
    hole_fill: HoleFill = "zero"
    """Inpainting only: what the DIRformer sees inside the hole. "zero" is the official LaMa input;
    "smooth" (our small presets) pre-fills the hole with `inpainting.smooth_fill` and adds that
    fill back as a global residual, so the network learns a correction of a smooth guess."""
    fill_biharmonic_iterations: int = 100
    """"smooth" only: conjugate-gradient steps of the fill's final biharmonic relaxation. Part of the
    model: the network is trained on the fill this gives (checkpoints that predate it used 100)."""

    def __post_init__(self) -> None:
        if self.kind not in ("deblur", "inpaint", "sr"):
            raise ValueError(f"unknown model kind {self.kind!r}")
        if self.kind == "sr" and self.scale not in (1, 2, 4):
            raise ValueError(f"SR scale must be 1, 2 or 4, got {self.scale}")
        if self.kind != "sr" and self.scale != 1:
            raise ValueError(f"{self.kind} models have scale 1, got {self.scale}")
        if self.hole_fill not in ("zero", "smooth"):
            raise ValueError(f"unknown hole_fill {self.hole_fill!r}")
        if self.hole_fill != "zero" and self.kind != "inpaint":
            raise ValueError("hole_fill applies to inpainting models only")
        if self.fill_biharmonic_iterations < 0:
            raise ValueError(f"fill_biharmonic_iterations must be >= 0, got {self.fill_biharmonic_iterations}")
        if self.kind == "inpaint" and self.dirformer.num_refinement_blocks:
            raise ValueError("the inpainting DIRformer has no refinement stage")
        for width, heads in zip(self.level_widths, self.dirformer.heads):
            if width % heads:
                raise ValueError(f"width {width} is not divisible by {heads} heads")

    # --- derived geometry -------------------------------------------------------------------
    @property
    def ipr_dim(self) -> int:
        return 4 * self.cpen.n_feats

    @property
    def level_widths(self) -> tuple[int, int, int, int]:
        d = self.dirformer.dim
        return (d, 2 * d, 4 * d, 8 * d)

    @property
    def image_channels(self) -> int:
        """Channels of the network input: RGB, or masked RGB + mask for inpainting."""
        return 4 if self.kind == "inpaint" else 3

    @property
    def lq_unshuffle(self) -> int:
        """Pixel-unshuffle factor that brings the LQ input to the DIRformer's working resolution."""
        return {1: 4, 2: 2, 4: 1}[self.scale] if self.kind == "sr" else 1

    @property
    def dirformer_in_channels(self) -> int:
        return self.image_channels * self.lq_unshuffle**2

    @property
    def cpen_s2_unshuffle(self) -> int:
        """CPEN_S2 sees the LQ unshuffled down to 1/4 of the output resolution."""
        return self.lq_unshuffle if self.kind == "sr" else 4

    @property
    def cpen_s2_in_channels(self) -> int:
        return self.image_channels * self.cpen_s2_unshuffle**2

    @property
    def cpen_s1_in_channels(self) -> int:
        return self.cpen_s2_in_channels + 3 * 16

    @property
    def size_multiple(self) -> int:
        """LQ height/width must be a multiple of this (DIRformer needs /8 after unshuffle)."""
        return 8 * self.lq_unshuffle if self.kind == "sr" else 8

    @property
    def pad_mode(self) -> Literal["reflect", "symmetric"]:
        # The official inpainting predictor pads numpy-"symmetric"; deblur/SR use torch "reflect".
        return "symmetric" if self.kind == "inpaint" else "reflect"

    # --- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        d = dict(data)
        g = dict(d.pop("dirformer"))
        g["num_blocks"] = tuple(g["num_blocks"])
        g["heads"] = tuple(g["heads"])
        return cls(
            dirformer=DIRformerConfig(**g),
            cpen=CPENConfig(**d.pop("cpen")),
            diffusion=DiffusionConfig(**d.pop("diffusion")),
            **d,
        )

    def renamed(self, name: str) -> ModelConfig:
        return replace(self, name=name)


def config_from_official_kwargs(name: str, kind: Kind, kwargs: dict[str, Any], scale: int = 1) -> ModelConfig:
    """Map the official `DiffIRS2`/`DiffIRS1` constructor arguments onto a `ModelConfig`.

    Used for the official option files and the reference fixtures, whose tiny configs are not
    presets. Arguments the official class ignores (e.g. `inp_channels` for SR) are ignored here.
    """
    ln = {"WithBias": "with_bias", "BiasFree": "bias_free"}[kwargs.get("LayerNorm_type", "WithBias")]
    return ModelConfig(
        name=name,
        kind=kind,
        scale=scale,
        dirformer=DIRformerConfig(
            dim=int(kwargs["dim"]),
            num_blocks=tuple(int(b) for b in kwargs["num_blocks"]),  # type: ignore[arg-type]
            num_refinement_blocks=int(kwargs.get("num_refinement_blocks", 0)),
            heads=tuple(int(h) for h in kwargs["heads"]),  # type: ignore[arg-type]
            ffn_expansion_factor=float(kwargs["ffn_expansion_factor"]),
            layer_norm=ln,  # type: ignore[arg-type]
            bias=bool(kwargs.get("bias", False)),
        ),
        cpen=CPENConfig(n_resblocks=int(kwargs["n_encoder_res"])),
        diffusion=DiffusionConfig(
            timesteps=int(kwargs.get("timesteps", 4)),
            linear_start=float(kwargs.get("linear_start", 0.1)),
            linear_end=float(kwargs.get("linear_end", 0.99)),
            n_denoise_res=int(kwargs.get("n_denoise_res", 1)),
        ),
    )
