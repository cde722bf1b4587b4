"""The images k8s/ deploys are built by `make image` and published by the release workflow, under the same names."""

from __future__ import annotations

import re
import shlex

import pytest
import tomllib
import yaml

from tests.deploy.conftest import KUSTOMIZATIONS, REPO, run, tool

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"


def _make(*args: str) -> str:
    proc = run(["make", "-s", *args])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def built_images() -> dict[str, str]:
    """Dockerfile -> the tag `make image` gives it (from the commands make would run)."""
    out = {}
    for line in _make("-n", "image").splitlines():
        words = shlex.split(line)
        if words[:2] == ["docker", "build"]:
            assert words[words.index("--target") + 1] == "serve", line
            out[words[words.index("-f") + 1]] = words[words.index("-t") + 1]
    return out


def _image(resources: list[dict]) -> str:
    (deployment,) = [r for r in resources if r["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container["image"]


def test_make_image_builds_the_images_k8s_deploys(rendered):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert _make("print-version").strip() == version
    images = built_images()
    assert set(images) == {"docker/Dockerfile.cpu", "docker/Dockerfile.cuda"}
    for dockerfile in images:
        assert (REPO / dockerfile).exists()
        assert re.search(r"^FROM .* AS serve$", (REPO / dockerfile).read_text(), re.M), dockerfile
    for name in KUSTOMIZATIONS:
        flavour = "cpu" if "cpu" in name else "cuda"
        assert _image(rendered[name]) == images[f"docker/Dockerfile.{flavour}"] == f"{_registry()}:{version}-{flavour}"


def _registry() -> str:
    return re.search(r"^IMAGE\s*\?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M).group(1)


def test_image_name_follows_make_variables():
    """Another registry or version is one variable away (what the README tells users to do)."""
    images = set(_make("-n", "image", "IMAGE=registry.example.com/diffir", "VERSION=9.9.9").split())
    assert {"registry.example.com/diffir:9.9.9-cpu", "registry.example.com/diffir:9.9.9-cuda"} <= images


def test_release_workflow_pushes_what_make_builds():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert triggers["push"]["tags"] == ["v*"]
    assert workflow["permissions"]["packages"] == "write"
    (job,) = workflow["jobs"].values()
    steps = job["steps"]
    runs = [s.get("run", "") for s in steps]
    assert any(r.strip() == "make image-push" for r in runs)
    login = next(s for s in steps if s.get("uses", "").startswith("docker/login-action@"))
    assert login["with"]["registry"] == _registry().split("/")[0] == "ghcr.io"
    assert any("print-version" in r and "GITHUB_REF_NAME" in r for r in runs), "tag must match the version"
    pushed = _make("-n", "image-push").split()
    assert {w for w in pushed if w.startswith(_registry())} == set(built_images().values())


@pytest.mark.parametrize("broken", [False, True], ids=["release.yml", "negative-control"])
def test_release_workflow_fits_the_github_actions_schema(tmp_path, broken):
    path = WORKFLOW
    if broken:
        path = tmp_path / "release.yml"
        path.write_text(WORKFLOW.read_text().replace("runs-on:", "runs-onn:"))
    proc = run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)])
    assert (proc.returncode != 0) is broken, proc.stdout + proc.stderr
