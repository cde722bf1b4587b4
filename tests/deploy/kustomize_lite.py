"""A small kustomize for the subset k8s/ uses, for machines without kubectl (whose built-in kustomize is the
reference: tests/deploy/test_k8s.py checks that both render the same objects wherever kubectl exists).

Supported: `resources` (files and directories), `namespace`, `labels` (pairs, includeSelectors),
`configMapGenerator` (envs, literals, behavior create/merge, the content-hash name suffix and the references to
it), `images` (newName/newTag), `patches` with a JSON 6902 file and a target. Anything else is an error.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "configMapGenerator", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
GENERATED = "kustomize-lite/generated"  # internal annotation: a generated ConfigMap's name needs the hash suffix


def _hash_suffix(data: dict[str, str]) -> str:
    """kustomize's ConfigMap name hash: sha256 of the JSON {kind, name, data}, first 10 hex digits re-lettered."""
    # kustomize v5 (kubectl 1.32) hashes an empty name: {"data":…,"kind":"ConfigMap","name":""} (cross-checked).
    encoded = json.dumps({"data": data, "kind": "ConfigMap", "name": ""}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def _apply_json6902(doc: dict, ops: list[dict]) -> None:
    for op in ops:
        *parents, last = _pointer(op["path"])
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(last) if isinstance(node, list) and last != "-" else last
        if op["op"] == "remove":
            del node[key]
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace" and (key not in node if isinstance(node, dict) else key >= len(node)):
                raise KeyError(f"replace of missing path {op['path']}")
            if isinstance(node, list) and op["op"] == "add":
                node.insert(len(node) if key == "-" else key, op["value"])
            else:
                node[key] = copy.deepcopy(op["value"])
        else:
            raise NotImplementedError(f"JSON patch op {op['op']}")


def _matches(doc: dict, target: dict) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    checks = {"group": group, "version": version, "kind": doc["kind"], "name": doc["metadata"]["name"]}
    return all(checks[key] == value for key, value in target.items() if key in checks)


def _selector_paths(doc: dict) -> list[dict]:
    """The label maps that `includeSelectors: true` also writes, per kind."""
    spec = doc.get("spec", {})
    out: list[dict] = []
    if doc["kind"] == "Service":
        out.append(spec.setdefault("selector", {}))
    elif doc["kind"] in WORKLOADS:
        out.append(spec.setdefault("selector", {}).setdefault("matchLabels", {}))
        pod = spec.setdefault("template", {})
        out.append(pod.setdefault("metadata", {}).setdefault("labels", {}))
        for constraint in pod.get("spec", {}).get("topologySpreadConstraints", []):
            out.append(constraint.setdefault("labelSelector", {}).setdefault("matchLabels", {}))
    elif doc["kind"] == "PodDisruptionBudget":
        out.append(spec.setdefault("selector", {}).setdefault("matchLabels", {}))
    return out


def _containers(doc: dict) -> list[dict]:
    if doc["kind"] not in WORKLOADS:
        return []
    pod = doc["spec"]["template"].get("spec", {})
    return pod.get("containers", []) + pod.get("initContainers", [])


def _build(directory: Path) -> list[dict]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise NotImplementedError(f"{directory}: kustomize-lite does not support {sorted(unknown)}")
    docs: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs += _build(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]

    for gen in kustomization.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for env_file in gen.get("envs", []):
            data.update(_env_file(directory / env_file))
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        behavior = gen.get("behavior", "create")
        existing = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == gen["name"]]
        if behavior == "merge":
            (cm,) = existing
            cm.setdefault("data", {}).update(data)
        elif behavior == "create" and not existing:
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": gen["name"], "annotations": {GENERATED: "true"}},
                    "data": data,
                }
            )
        else:
            raise NotImplementedError(f"configMapGenerator behavior {behavior} for {gen['name']}")

    for patch in kustomization.get("patches", []):
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        if not isinstance(ops, list):
            raise NotImplementedError("only JSON 6902 patches")
        targets = [d for d in docs if _matches(d, patch["target"])]
        if not targets:
            raise LookupError(f"patch {patch['path']}: no resource matches {patch['target']}")
        for doc in targets:
            _apply_json6902(doc, ops)

    for image in kustomization.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                ref = container["image"]
                name, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "")
                if name == image["name"]:
                    new = image.get("newName", name)
                    new_tag = image.get("newTag", tag)
                    container["image"] = f"{new}:{new_tag}" if new_tag else new

    for group in kustomization.get("labels", []):
        pairs = group["pairs"]
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(pairs)
            if group.get("includeSelectors"):
                for labels in _selector_paths(doc):
                    labels.update(pairs)

    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


def render(directory: Path) -> list[dict]:
    """The kustomization in `directory` rendered: generated names hashed and every reference to them updated."""
    docs = _build(Path(directory))
    renames = {}
    for doc in docs:
        annotations = doc["metadata"].get("annotations", {})
        if annotations.pop(GENERATED, None):
            if not annotations:
                del doc["metadata"]["annotations"]
            old = doc["metadata"]["name"]
            doc["metadata"]["name"] = f"{old}-{_hash_suffix(doc.get('data', {}))}"
            renames[old] = doc["metadata"]["name"]
    for doc in docs:
        for container in _containers(doc):
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef")
                if ref and ref["name"] in renames:
                    ref["name"] = renames[ref["name"]]
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("configMapKeyRef")
                if ref and ref["name"] in renames:
                    ref["name"] = renames[ref["name"]]
        if doc["kind"] in WORKLOADS:
            for volume in doc["spec"]["template"].get("spec", {}).get("volumes", []):
                ref = volume.get("configMap")
                if ref and ref["name"] in renames:
                    ref["name"] = renames[ref["name"]]
    return docs
