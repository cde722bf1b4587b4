"""Exported graphs on disk, read and verified against their sidecars.

File names, graph names and the sidecar schema are the contract in `models.graphs`. `<file>.json`
is preferred when present (so an ONNX and a TorchScript export can share a folder). Configuring
any one of a model's graphs finds its siblings, so the tiling pair (`prior` + `restorer`) is
picked up without more settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.checkpoint import sha256_file
from models.graphs import GRAPHS, SIDECAR_REQUIRED, find_sidecar, parse_artifact_name, sibling_artifact
from service.runtime.base import ModelInfo


class ArtifactError(ValueError):
    """An artifact that cannot be served; the message names the file and the problem."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    graph: str
    meta: dict[str, Any]

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.meta.get("inputs") or GRAPHS[self.graph].inputs)

    @property
    def output(self) -> str:
        return (self.meta.get("outputs") or [GRAPHS[self.graph].output])[0]


def split_name(path: Path) -> tuple[str, str]:
    """`deblur.full.onnx` -> ("deblur", "full")."""
    try:
        return parse_artifact_name(path)
    except ValueError as exc:
        raise ArtifactError(str(exc)) from None


def read_artifact(path: Path) -> Artifact:
    """Check the file, its sidecar and its sha256; return what the sidecar says."""
    _, graph = split_name(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    sidecar = find_sidecar(path)
    if not sidecar.is_file():
        raise ArtifactError(f"{path}: sidecar {sidecar.name} is missing")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{sidecar}: unreadable sidecar ({exc})") from exc
    if not isinstance(meta, dict) or any(key not in meta for key in SIDECAR_REQUIRED):
        raise ArtifactError(f"{sidecar}: sidecar lacks one of {', '.join(f'`{k}`' for k in SIDECAR_REQUIRED)}")
    described = meta.get("artifact")
    if described and described != path.name:
        raise ArtifactError(
            f"{sidecar} describes {described}, not {path.name} (ONNX and TorchScript exports in one folder share "
            f"`<name>.<graph>.json`; export each format into its own folder)"
        )
    digest = sha256_file(path)
    if digest != meta["sha256"]:
        raise ArtifactError(f"{path}: sha256 {digest[:16]}… does not match the sidecar's {str(meta['sha256'])[:16]}…")
    if meta.get("graph", graph) != graph:
        raise ArtifactError(f"{sidecar}: describes graph {meta.get('graph')!r}, the file name says {graph!r}")
    return Artifact(path, graph, meta)


def find_graphs(path: Path) -> dict[str, Artifact]:
    """The configured graph plus whichever siblings exist (each one verified)."""
    split_name(path)
    found = {}
    for graph in GRAPHS:
        sibling = sibling_artifact(path, graph)
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
        or f"sha256:{str(meta.get('checkpoint_sha256') or meta['sha256'])[:12]}"
    )
    return ModelInfo.from_config(config, version=str(version), sha256=meta["sha256"], source=str(first.path))
