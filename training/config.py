"""Typed training configuration: one flat dataclass, task defaults, config files and CLI overrides.

Precedence: dataclass defaults < the task's recipe (`TASK_RECIPES`) < a config file (`--config
file.toml|json`) < command-line flags. Every layer is checked against the dataclass fields, so a
misspelt key is an error rather than a silently ignored setting.

Learning-rate milestones and patch phases are *fractions of `steps`*: the official recipes are
long (300k-1M iterations) and scaling them proportionally keeps their shape for short CPU runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from models.config import ModelConfig
from models.tasks import TASKS, get_task
from models.variants import get_preset


@dataclass
class TrainConfig:
    # what to train
    task: str = "sr-x4"
    stage: int = 1
    preset: str = ""
    """Network preset; empty = the task's preset (models.tasks)."""
    degradation: str = ""
    """Degradation id; empty = the task's (e.g. `realesrgan` with an sr task = the realsr family)."""
    model_dim: int = 0
    model_blocks: tuple[int, ...] = ()
    model_refinement: int = -1
    model_heads: tuple[int, ...] = ()
    model_ffn: float = 0.0
    model_cpen_blocks: int = -1
    model_cpen_feats: int = 0
    model_fill_iterations: int = -1
    """Inpainting presets with the `smooth` hole pre-fill: biharmonic conjugate-gradient steps of the
    fill the network is trained on (`ModelConfig.fill_biharmonic_iterations`); -1 keeps the preset's,
    or the continued checkpoint's. A continuation that changes it teaches the network a new fill."""
    # data
    data: tuple[str, ...] = ()
    """Folders of clean images (unpaired mode)."""
    paired: str = ""
    """A folder with lq/ and gt/ sub-folders (paired mode)."""
    val: str = ""
    val_images: int = 4
    val_crop: int = 192
    val_seed: int = 1234
    val_save: int = 2
    blur_p_real: float = 0.3
    """Motion blur: share of samples blurred with a (rotated/flipped) real Levin kernel."""
    blur_kernel_sizes: tuple[int, int] = (11, 31)
    """Motion blur: size range of the synthetic shake kernels (odd, pixels)."""
    blur_p_identity: float = 0.0
    """Motion blur: share of samples left sharp (identity kernel, noise only), so the model learns to
    leave a sharp photo alone."""
    blur_p_mild: float = 0.0
    """Motion blur: share of samples with a mild synthetic shake of `blur_mild_sizes`."""
    blur_mild_sizes: tuple[int, int] = (3, 9)
    """Motion blur: size range of the mild shake kernels (odd, pixels)."""
    blur_noise: tuple[float, float] = (0.0, 3.0)
    """Motion blur: range of the Gaussian noise sigma, in 8-bit levels (x/255)."""
    mask_dir: str = ""
    mask_hole_is_white: bool = True
    mask_coverage: tuple[float, float] = (0.0, 1.0)
    patches: tuple[int, ...] = (128,)
    batches: tuple[int, ...] = (8,)
    phase_fracs: tuple[float, ...] = ()
    """Fraction of `steps` spent in each patch phase (empty: equal shares)."""
    workers: int = 2
    augment: bool = True
    # optimisation
    steps: int = 1000
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    schedule: str = "multistep"
    """multistep | cosine_restart | cosine | constant (stage-2 warm-up handled separately)."""
    milestones: tuple[float, ...] = (0.5, 0.7)
    gamma: float = 0.5
    periods: tuple[float, ...] = (1.0,)
    restart_weights: tuple[float, ...] = (1.0,)
    eta_min: tuple[float, ...] = (1e-6,)
    grad_clip: float = 0.0
    ema: float = 0.999
    ema_warmup: bool = False
    """Use min(ema, (1+step)/(10+step)) so that short runs are not dominated by the random init."""
    encoder_frac: float = 0.0
    """Stage 2: fraction of steps of the L_diff-only warm-up of CPEN_S2 + denoiser (official 0.25)."""
    lr_encoder: float = 2e-4
    encoder_decay_frac: float = 0.6
    """Stage 2 warm-up: LR x0.1 after this fraction of the warm-up (official 60k of 100k)."""
    joint_decay_frac: float = 0.0
    """Stage 2 after warm-up: LR x `gamma` every this fraction of steps (0 = use `schedule`)."""
    # losses
    weight_known: float = 1.0
    weight_missing: float = 1.0
    pixel_loss: str = "l1"
    """Non-inpainting tasks: "l1" or "l2" (mean squared error) between output and ground truth. L1 trains
    faster from far away; a short L2 phase at the end optimises what PSNR measures (the mean error)."""
    hole_loss: str = "l1"
    """Inpainting: "l1" or "l2" inside the hole. L2's minimiser is the conditional mean, the PSNR-optimal
    guess where a hole is ambiguous; L1's is the median, sharper but further from it on average."""
    diff_weight: float = 1.0
    gan_weight: float = 0.0
    fm_weight: float = 0.0
    perceptual_weight: float = 0.0
    vgg_weights: str = ""
    d_lr: float = 1e-4
    # run
    init: str = ""
    """Stage 2: the stage-1 checkpoint (default: <out>/s1/model_latest.safetensors)."""
    init_student: str = ""
    """Stage 2: start the stage-2 network from this stage-2 checkpoint (continue training a shipped model
    against the same stage-1 teacher) instead of copying the teacher's DIRformer into a fresh one."""
    teacher: bool = True
    """Stage 2: distil the prior from the frozen stage-1 teacher (L_diff, the official recipe). False:
    no teacher; fine-tune the serving path itself (prior from pure noise x_T, image losses only),
    which needs `init_student` and is how a shipped model is continued when its teacher is gone."""
    out: str = ""
    """Run folder (default runs/<task>); stage folders s1/ and s2/ inside."""
    resume: bool = False
    seed: int = 0
    noise_seed: int = 0
    threads: int = 0
    device: str = "auto"
    precision: str = "fp32"
    """fp32 | bf16 | fp16: autocast dtype of the training forward. bf16 runs on CPUs with bf16 units
    (AVX512-BF16, AMX) and on GPUs; fp16 is CUDA-only (with a gradient scaler). Master weights,
    optimiser state and EMA stay fp32."""
    amp: bool = False
    """Legacy switch: on CUDA, the same as `precision = "fp16"`."""
    log_every: int = 10
    val_every: int = 500
    save_every: int = 500
    keep: int = 3
    progress: bool = True
    stop_at: int = 0
    """Stop (and save) once this step is reached, keeping the schedule of `steps`; 0 = never. For
    splitting a run across sessions and for the resume test."""
    max_minutes: float = 0.0
    """Stop (and save) after this wall time; 0 = no limit. Lets a scheduler share a CPU fairly."""

    # --- derived ------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.task}")

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / f"s{self.stage}"

    def model_config(self) -> ModelConfig:
        """The task's preset (or `preset`) with the `model_*` overrides applied (tiny test models)."""
        base = get_preset(self.preset or get_task(self.task).preset)
        g, c = base.dirformer, base.cpen
        g = dataclasses.replace(
            g,
            dim=self.model_dim or g.dim,
            num_blocks=tuple(self.model_blocks) or g.num_blocks,
            num_refinement_blocks=g.num_refinement_blocks if self.model_refinement < 0 else self.model_refinement,
            heads=tuple(self.model_heads) or g.heads,
            ffn_expansion_factor=self.model_ffn or g.ffn_expansion_factor,
        )
        c = dataclasses.replace(
            c,
            n_resblocks=c.n_resblocks if self.model_cpen_blocks < 0 else self.model_cpen_blocks,
            n_feats=self.model_cpen_feats or c.n_feats,
        )
        changed = (g, c) != (base.dirformer, base.cpen)
        return self.with_fill(
            dataclasses.replace(base, dirformer=g, cpen=c, name=f"{base.name}-custom" if changed else base.name)
        )

    def with_fill(self, config: ModelConfig) -> ModelConfig:
        """`config` with `model_fill_iterations` applied (unchanged when it is -1)."""
        if self.model_fill_iterations < 0:
            return config
        return dataclasses.replace(config, fill_biharmonic_iterations=self.model_fill_iterations)

    def degradation_id(self) -> str:
        return self.degradation or get_task(self.task).degradation


# Official progressive training (reference §2): patch and per-GPU batch per phase; shares in k-iterations.
_DEBLUR_PHASES: dict[str, Any] = {"patches": (192, 256, 320, 384, 464, 512), "batches": (8, 4, 2, 2, 1, 1)}
_SR_BASE: dict[str, Any] = {"betas": (0.9, 0.99), "patches": (128,), "batches": (8,)}

# Recipes: the official hyper-parameters per family (reference §2-5), with lengths as fractions.
TASK_RECIPES: dict[str, dict[int, dict[str, Any]]] = {
    "deblur": {
        1: {
            "betas": (0.9, 0.999),
            "schedule": "cosine_restart",
            "periods": (92 / 300, 208 / 300),
            "restart_weights": (1.0, 1.0),
            "eta_min": (2.85e-4, 1e-6),
            **_DEBLUR_PHASES,
            "phase_fracs": (92, 80, 38, 33, 33, 24),
        },
        2: {
            "betas": (0.9, 0.99),
            "encoder_frac": 0.25,
            "joint_decay_frac": 0.2,
            **_DEBLUR_PHASES,
            "phase_fracs": (150, 60, 50, 60, 40, 40),
        },
    },
    "sr": {
        1: {**_SR_BASE, "schedule": "multistep", "milestones": (0.5, 0.7)},
        2: {**_SR_BASE, "schedule": "multistep", "milestones": (0.5, 0.7)},
    },
    "realsr": {
        1: {**_SR_BASE, "schedule": "multistep", "milestones": (0.5, 0.7)},
        2: {**_SR_BASE, "encoder_frac": 0.1, "joint_decay_frac": 0.6},
    },
    "inpaint": {
        1: {"betas": (0.9, 0.999), "schedule": "constant", "grad_clip": 1.0, "ema": 0.0, "weight_known": 10.0,
            "weight_missing": 0.0, "patches": (128,), "batches": (4,)},
        2: {"betas": (0.9, 0.999), "schedule": "constant", "grad_clip": 1.0, "ema": 0.0, "weight_known": 10.0,
            "weight_missing": 0.0, "patches": (128,), "batches": (4,)},
    },
}  # fmt: skip


def family(task: str, degradation: str = "") -> str:
    kind = get_task(task).config.kind
    if kind == "sr" and (degradation or get_task(task).degradation) == "realesrgan":
        return "realsr"
    return kind


# --- parsing -------------------------------------------------------------------------------------
def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a config-file or CLI value to the field's type, or raise a clear error."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0]
        out = tuple(_coerce(name, item, v) for v in value)
        if len(args) == 2 and args[1] is not Ellipsis and len(out) != len(args):
            raise ValueError(f"{name}: expected {len(args)} values, got {len(out)}")
        return out
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected a boolean, got {value!r}")
    try:
        return tp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot read {value!r} as {tp.__name__}") from exc


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any], source: str) -> TrainConfig:
    types_ = _field_types()
    unknown = sorted(set(overrides) - set(types_))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}")
    return dataclasses.replace(cfg, **{k: _coerce(k, types_[k], v) for k, v in overrides.items()})


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.suffix == ".toml":
        import tomllib

        return tomllib.loads(path.read_text())
    return json.loads(path.read_text())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML or JSON file with TrainConfig keys")
    for name, tp in _field_types().items():
        flag = "--" + name.replace("_", "-")
        if name == "data":
            parser.add_argument(flag, nargs="+", default=None, help="folder(s) of clean training images")
        elif tp is bool:
            parser.add_argument(flag, nargs="?", const="true", default=None, metavar="BOOL")
        else:
            parser.add_argument(flag, default=None, metavar=name.upper())


def config_from_args(args: argparse.Namespace, stage: int) -> TrainConfig:
    cli = {k: v for k, v in vars(args).items() if k in _field_types() and v is not None}
    file_values = load_config_file(args.config) if args.config else {}
    task = cli.get("task") or file_values.get("task") or TrainConfig.task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    degradation = cli.get("degradation") or file_values.get("degradation") or ""
    cfg = TrainConfig(task=task, stage=stage)
    cfg = apply_overrides(cfg, TASK_RECIPES[family(task, degradation)][stage], "recipe")
    for layer, source in ((file_values, str(args.config)), (cli, "command line")):
        if "patches" in layer and "phase_fracs" not in layer:  # new patch sizes, no shares given: equal
            layer = layer | {"phase_fracs": ()}
        cfg = apply_overrides(cfg, layer, source)
    if cfg.pixel_loss not in PIXEL_LOSSES:
        raise ValueError(f"pixel_loss {cfg.pixel_loss!r}: expected one of {', '.join(PIXEL_LOSSES)}")
    if cfg.hole_loss not in HOLE_LOSSES:
        raise ValueError(f"hole_loss {cfg.hole_loss!r}: expected one of {', '.join(HOLE_LOSSES)}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision {cfg.precision!r}: expected one of {', '.join(PRECISIONS)}")
    if not cfg.teacher and stage == 2 and not cfg.init_student:
        raise ValueError("teacher = false needs init_student: the network to fine-tune")
    if not cfg.teacher and cfg.encoder_frac > 0:
        raise ValueError("teacher = false has no L_diff target: set encoder_frac = 0")
    return dataclasses.replace(cfg, stage=stage)


HOLE_LOSSES = ("l1", "l2")
PIXEL_LOSSES = ("l1", "l2")
PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_dtype(cfg: TrainConfig, device_type: str) -> torch.dtype | None:
    """The dtype the training forward autocasts to on `device_type`, or None for plain fp32."""
    precision = "fp16" if cfg.amp and device_type == "cuda" and cfg.precision == "fp32" else cfg.precision
    if precision == "fp32":
        return None
    if precision == "fp16" and device_type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def phases(cfg: TrainConfig) -> list[tuple[int, int, int]]:
    """(steps, patch, batch) per phase; the last phase absorbs rounding."""
    n = len(cfg.patches)
    if len(cfg.batches) != n:
        raise ValueError(f"patches {cfg.patches} and batches {cfg.batches} differ in length")
    fracs = cfg.phase_fracs or tuple(1.0 / n for _ in range(n))
    if len(fracs) != n:
        raise ValueError(f"phase_fracs needs {n} values")
    total = sum(fracs)
    out, used = [], 0
    for i, (f, p, b) in enumerate(zip(fracs, cfg.patches, cfg.batches)):
        steps = cfg.steps - used if i == n - 1 else round(cfg.steps * f / total)
        out.append((max(steps, 1), p, b))
        used += steps
    return out


def sequence_arg(values: Sequence[Any]) -> str:
    return ",".join(str(v) for v in values)
