"""THE one place where each restoration task is defined.

A task ties together what a user asks for (`POST /restore/<name>`), the network preset that
serves it, the degradation the training package synthesises for it, and the default checkpoint
shipped in `models/weights/`. Training and the service both read this table; nobody retypes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from models.config import ModelConfig
from models.variants import get_preset

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    preset: str
    degradation: str
    """Degradation id understood by `training.degradations` (e.g. "bicubic", "motion-blur")."""
    default_checkpoint: str | None
    """File name of the stage-2 checkpoint in `models/weights/` (None: configure one)."""
    description: str

    @property
    def config(self) -> ModelConfig:
        return get_preset(self.preset)

    @property
    def needs_mask(self) -> bool:
        return self.config.kind == "inpaint"

    @property
    def scale(self) -> int:
        return self.config.scale

    def default_checkpoint_path(self) -> Path | None:
        return WEIGHTS_DIR / self.default_checkpoint if self.default_checkpoint else None


TASKS: MappingProxyType[str, TaskSpec] = MappingProxyType(
    {
        t.name: t
        for t in (
            TaskSpec("deblur", "deblur-small", "motion-blur", "deblur.safetensors", "blind motion deblurring"),
            TaskSpec("sr-x4", "sr-x4-small", "bicubic", "sr-x4.safetensors", "4x super-resolution (bicubic LR)"),
            TaskSpec(
                "inpaint", "inpaint-fill-small", "lama-masks", "inpaint.safetensors", "inpainting, mask white = hole"
            ),
        )
    }
)


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
