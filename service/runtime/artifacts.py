"""Exported graphs on disk: `<dir>/<name>.<graph>.<onnx|ts>` with a JSON sidecar each.

The sidecar (written by `python -m training export`; `<file>.json` is preferred when present, so
an ONNX and a TorchScript export can share a folder) carries the checkpoint's fields (variant,
config, ...) plus `graph`, `inputs`, `outputs`, `size_multiple` and the sha256 of the artifact
itself. Configuring any one of a model's graphs finds its siblings, so the tiling pair
(`prior` + `restorer`) is picked up without more settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.runtime.base import ModelInfo

GRAPHS = ("full", "prior", "restorer")


class ArtifactError(ValueError):
    """An artifact that cannot be served; the message names the file and the problem."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifact:
    path: Path
    graph: str
    meta: dict[str, Any]


def split_name(path: Path) -> tuple[str, str]:
    """`deblur.full.onnx` -> ("deblur", "full")."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    name, _, graph = stem.rpartition(".")
    if not name or graph not in GRAPHS:
        raise ArtifactError(f"{path}: artifact names look like <name>.<{'|'.join(GRAPHS)}>{path.suffix}")
    return name, graph


def sidecar_for(path: Path) -> Path:
    """`<file>.json` (e.g. `deblur.full.onnx.json`) when present, else `<name>.<graph>.json`."""
    own = path.with_name(path.name + ".json")
    return own if own.is_file() else path.with_suffix(".json")


def read_artifact(path: Path) -> Artifact:
    """Check the file, its sidecar and its sha256; return what the sidecar says."""
    _, graph = split_name(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    sidecar = sidecar_for(path)
    if not sidecar.is_file():
        raise ArtifactError(f"{path}: sidecar {sidecar.name} is missing")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{sidecar}: unreadable sidecar ({exc})") from exc
    if not isinstance(meta, dict) or "config" not in meta or "sha256" not in meta:
        raise ArtifactError(f"{sidecar}: sidecar lacks `config` or `sha256`")
    described = meta.get("artifact")
    if described and described != path.name:
        raise ArtifactError(
            f"{sidecar} describes {described}, not {path.name} (ONNX and TorchScript exports in one folder share "
            f"`<name>.<graph>.json`; export each format into its own folder)"
        )
    digest = _sha256(path)
    if digest != meta["sha256"]:
        raise ArtifactError(f"{path}: sha256 {digest[:16]}… does not match the sidecar's {str(meta['sha256'])[:16]}…")
    if meta.get("graph", graph) != graph:
        raise ArtifactError(f"{sidecar}: describes graph {meta.get('graph')!r}, the file name says {graph!r}")
    return Artifact(path, graph, meta)


def find_graphs(path: Path) -> dict[str, Artifact]:
    """The configured graph plus whichever siblings exist (each one verified)."""
    name, _ = split_name(path)
    found = {}
    for graph in GRAPHS:
        sibling = path.with_name(f"{name}.{graph}{path.suffix}")
        if sibling == path or sibling.is_file():
            found[graph] = read_artifact(sibling)
    if "full" not in found and not {"prior", "restorer"} <= found.keys():
        raise ArtifactError(f"{path}: need the `full` graph or both `prior` and `restorer` next to it")
    return found


def model_info(artifacts: dict[str, Artifact]) -> ModelInfo:
    """ModelInfo from the sidecar config (a `models.ModelConfig` dict)."""
    from models.config import ModelConfig

    first = next(iter(artifacts.values()))
    meta = first.meta
    config = ModelConfig.from_dict(meta["config"])
    provenance = meta.get("provenance") or {}
    version = (
        meta.get("version")
        or provenance.get("version")
        or f"sha256:{str(meta.get('checkpoint_sha256', meta['sha256']))[:12]}"
    )
    return ModelInfo.from_config(config, version=str(version), sha256=meta["sha256"], source=str(first.path))
