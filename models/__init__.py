"""DiffIR networks: configs, presets, stage-1/stage-2 models and self-describing checkpoints.

This package depends on torch (and safetensors for our checkpoint format) only; nothing else
of the project is imported here.
"""

from models.checkpoint import load_model, load_stage1_model, save_checkpoint
from models.config import CPENConfig, DiffusionConfig, DIRformerConfig, ModelConfig, config_from_official_kwargs
from models.diffir import DiffIRS1, DiffIRS2, noise_for_seed
from models.variants import OFFICIAL_VARIANTS, PRESETS, get_preset

__all__ = [
    "OFFICIAL_VARIANTS",
    "PRESETS",
    "CPENConfig",
    "DIRformerConfig",
    "DiffIRS1",
    "DiffIRS2",
    "DiffusionConfig",
    "ModelConfig",
    "config_from_official_kwargs",
    "get_preset",
    "load_model",
    "load_stage1_model",
    "noise_for_seed",
    "save_checkpoint",
]
