"""Self-describing checkpoints and strict loading of official ones.

Our format: `<name>.safetensors` (weights, no pickle) + `<name>.json` sidecar with the variant
name, the full config, the stage, a format version, the sha256 of the weights file and the
training provenance. Official files (basicsr `.pth` with `params_ema`/`params`, a bare state
dict, or an inpainting Lightning `.ckpt` with `generator.`-prefixed keys) are unwrapped here
and nowhere else; they are read with `weights_only=True`, never unpickled freely.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from models.config import ModelConfig
from models.diffir import DiffIRS1, DiffIRS2
from models.diffusion import SCHEDULE_BUFFERS
from models.variants import OFFICIAL_VARIANTS, PRESETS, get_preset

FORMAT_NAME = "diffir-serve-checkpoint"
FORMAT_VERSION = 1
Stage = Literal["s1", "s2"]
_ALIASES = {"diffusion.model.": "denoise.", "diffusion.condition.": "condition."}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says why and what to do."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


# --- canonical state dicts -------------------------------------------------------------------
def canonical_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Unique tensors only: aliases (`diffusion.model/condition.*`) and schedule buffers dropped."""
    out = {}
    for key, value in module.state_dict().items():
        if key.startswith(tuple(_ALIASES)) or key in {f"diffusion.{b}" for b in SCHEDULE_BUFFERS}:
            continue
        out[key] = value
    return out


def _unwrap_container(obj: Any, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    for key in ("params_ema", "params"):
        if key in obj and isinstance(obj[key], Mapping):
            return dict(obj[key])
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd = obj["state_dict"]
        gen = {k[len("generator.") :]: v for k, v in sd.items() if k.startswith("generator.")}
        if not gen:
            raise CheckpointError(f"{source}: Lightning checkpoint without `generator.` weights")
        return gen
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise CheckpointError(f"{source}: no `params_ema`, `params`, `state_dict` or bare tensors found")


def canonicalize(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Fold the official aliases into their originals (checking they agree) and drop buffers."""
    out: dict[str, torch.Tensor] = {}
    aliased: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is not a tensor ({type(value).__name__})")
        if key.startswith("module."):
            key = key[len("module.") :]
        alias = next((a for a in _ALIASES if key.startswith(a)), None)
        if alias is not None:
            aliased[_ALIASES[alias] + key[len(alias) :]] = value
        elif key.startswith("diffusion.") and key[len("diffusion.") :] in SCHEDULE_BUFFERS:
            continue  # recomputed from the config; checked below through the outputs
        else:
            out[key] = value
    for key, value in aliased.items():
        if key not in out:
            out[key] = value
        elif out[key].shape != value.shape or not torch.equal(out[key], value):
            raise CheckpointError(f"{source}: aliased copy of {key} differs from the original")
    return out


def _shapes(sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def expected_shapes(config: ModelConfig, stage: Stage) -> dict[str, tuple[int, ...]]:
    """Canonical key -> shape of a freshly built network, without allocating any weights."""
    with torch.device("meta"):
        net = DiffIRS2(config) if stage == "s2" else DiffIRS1(config)
    return _shapes(canonical_state_dict(net))


def infer_variant(sd: Mapping[str, torch.Tensor], stage: Stage, source: str = "checkpoint") -> ModelConfig:
    """Match the tensor shapes against every preset; exactly one match or a clear error."""
    shapes = _shapes(sd)
    matches = [name for name, cfg in PRESETS.items() if expected_shapes(cfg, stage) == shapes]
    if len(matches) == 1:
        return PRESETS[matches[0]]
    if len(matches) > 1:
        raise CheckpointError(
            f"{source}: ambiguous architecture, identical to {', '.join(matches)}; "
            f"pass variant= one of them (they differ only in training data)"
        )
    embed = shapes.get("G.patch_embed.proj.weight")
    raise CheckpointError(
        f"{source}: unknown {stage.upper()} architecture ({len(shapes)} tensors, patch embedding {embed}); "
        f"it matches none of the presets ({', '.join(PRESETS)}). Pass variant= a preset name or a ModelConfig."
    )


def _load_strict(net: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    expected = canonical_state_dict(net)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(expected) & set(sd) if tuple(expected[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        lines = [f"{source} does not fit variant {net.config.name!r}:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" … (+{len(keys) - 8} more)" if len(keys) > 8 else "")
                lines.append(f"  {label} ({len(keys)}): {shown}")
        raise CheckpointError("\n".join(lines))
    with torch.no_grad():
        for key, param in expected.items():
            param.copy_(sd[key].to(param.dtype))


# --- public API ----------------------------------------------------------------------------
def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Canonical tensors of any supported file, plus our sidecar when there is one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        meta_path = sidecar_path(path)
        if not meta_path.is_file():
            raise CheckpointError(f"{path}: sidecar {meta_path.name} is missing")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{meta_path}: not a {FORMAT_NAME} v{FORMAT_VERSION} sidecar")
        digest = sha256_file(path)
        if digest != meta.get("sha256"):
            raise CheckpointError(
                f"{path}: sha256 {digest[:16]}… does not match the sidecar's {str(meta.get('sha256'))[:16]}…"
            )
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from exc
        return tensors, meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a loadable weights-only torch file ({exc})") from exc
    return canonicalize(_unwrap_container(obj, str(path)), str(path)), None


def _resolve_config(
    sd: dict[str, torch.Tensor],
    meta: dict[str, Any] | None,
    variant: str | ModelConfig | None,
    stage: Stage,
    source: str,
) -> ModelConfig:
    if isinstance(variant, ModelConfig):
        return variant
    if meta is not None:
        cfg = ModelConfig.from_dict(meta["config"])
        if variant is not None and variant != cfg.name:
            raise CheckpointError(f"{source}: holds variant {cfg.name!r}, not {variant!r}")
        if meta.get("stage") != stage:
            raise CheckpointError(f"{source}: is a {meta.get('stage')} checkpoint, expected {stage}")
        return cfg
    if variant is not None:
        try:
            return get_preset(variant)
        except KeyError as exc:
            raise CheckpointError(str(exc.args[0])) from None
    return infer_variant(sd, stage, source)


def _load(path: str | Path, variant: str | ModelConfig | None, device: str | torch.device, stage: Stage):
    sd, meta = read_checkpoint(path)
    config = _resolve_config(sd, meta, variant, stage, str(path))
    net = DiffIRS2(config) if stage == "s2" else DiffIRS1(config)
    _load_strict(net, sd, str(path))
    return net.to(device).eval()


def load_model(
    path: str | Path, variant: str | ModelConfig | None = None, device: str | torch.device = "cpu"
) -> DiffIRS2:
    """The stage-2 network in eval mode from an official or our own checkpoint (strict).

    `variant` is a preset name or a `ModelConfig`; without it, our sidecar names it, or the
    tensor shapes must match exactly one preset (else a `CheckpointError` says what to pass).
    """
    return _load(path, variant, device, "s2")


def load_stage1_model(
    path: str | Path, variant: str | ModelConfig | None = None, device: str | torch.device = "cpu"
) -> DiffIRS1:
    """The stage-1 network (CPEN_S1 + DIRformer) in eval mode (strict); needed for training only."""
    return _load(path, variant, device, "s1")


def save_checkpoint(model: DiffIRS1 | DiffIRS2, path: str | Path, provenance: Mapping[str, Any] | None = None) -> Path:
    """Write `<path>.safetensors` and its JSON sidecar; returns the weights path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in canonical_state_dict(model).items()}
    save_file(tensors, str(path))
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "variant": model.config.name,
        "official_variant": model.config.name in OFFICIAL_VARIANTS,
        "stage": "s2" if isinstance(model, DiffIRS2) else "s1",
        "config": model.config.to_dict(),
        "sha256": sha256_file(path),
        "parameters": sum(t.numel() for t in tensors.values()),
        "provenance": dict(provenance or {}),
    }
    sidecar_path(path).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The JSON sidecar of a weights file or exported artifact."""
    return json.loads(sidecar_path(Path(path)).read_text())
