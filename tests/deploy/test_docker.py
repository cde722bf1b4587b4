"""Dockerfiles (hadolint + the image contract), the build context (.dockerignore) and the package pins."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.deploy.conftest import DOCKERFILES, REPO, run, tool


def test_there_are_cpu_and_cuda_dockerfiles():
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile.cpu", "Dockerfile.cuda"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    proc = run([tool("hadolint"), "--no-color", str(dockerfile)], timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """Negative control: unpinned base and packages, root user, no cleanup."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install fastapi\n")
    proc = run([tool("hadolint"), "--no-color", str(bad)], timeout=60)
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013"):
        assert rule in proc.stdout, proc.stdout


def parse_dockerfile(path: Path) -> list[dict]:
    """Stages of a Dockerfile: {'name', 'base', 'instructions': [(INSTR, args)]}; ARG defaults substituted."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[dict] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        rest = rest.strip()
        if instr == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args.setdefault(key, value)
        if instr == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            stages.append({"name": name, "base": base, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((instr, rest))
    return stages


def _env(stages: list[dict], final: dict) -> dict[str, str]:
    """ENV visible in a stage, following `FROM <earlier stage>` chains."""
    by_name = {s["name"]: s for s in stages}
    chain = [final]
    while chain[-1]["base"] in by_name:
        chain.append(by_name[chain[-1]["base"]])
    env: dict[str, str] = {}
    for stage in reversed(chain):
        for instr, rest in stage["instructions"]:
            if instr == "ENV":
                for token in shlex.split(rest):
                    key, _, value = token.partition("=")
                    env[key] = value
    return env


def _last(stage: dict, instr: str) -> str | None:
    found = [rest for i, rest in stage["instructions"] if i == instr]
    return found[-1] if found else None


SERVE_STAGES = [("Dockerfile.cpu", "serve"), ("Dockerfile.cuda", "serve")]


@pytest.mark.parametrize(("name", "target"), [*SERVE_STAGES, ("Dockerfile.cuda", "train")])
def test_image_contract(name, target, monkeypatch):
    stages = parse_dockerfile(REPO / "docker" / name)
    assert len(stages) >= 2, "multi-stage build"
    by_name = {s["name"]: s for s in stages}
    final = by_name[target]
    for stage in stages:
        base = stage["base"]
        if base in by_name:
            continue
        _image, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"unpinned base image {base}"
    user = _last(final, "USER")
    chain_users = [_last(s, "USER") for s in stages if s["name"] == target]
    assert user or any(chain_users)
    uid = user.split(":")[0]
    args = dict(rest.split("=", 1) for s in stages for i, rest in s["instructions"] if i == "ARG" and "=" in rest)
    uid = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], uid)
    assert uid.isdigit() and int(uid) >= 1000, f"must run as a numeric non-root user, got {uid}"

    env = _env(stages, final)
    assert env["HOME"].startswith("/tmp")
    for cache in ("XDG_CACHE_HOME", "TORCH_HOME", "MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        assert env[cache].startswith("/tmp/"), cache
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "no .pyc writes on a read-only root"
    # Every pip install is pinned: torch by version from PyTorch's index, everything else hash-checked from
    # a lock file (tests/test_packaging.py checks the locks), the project itself without dependencies.
    for stage in stages:
        for instr, rest in stage["instructions"]:
            if instr == "RUN" and "pip install" in rest:
                for command in rest.split("&&"):
                    if "pip install" in command:
                        locked = re.search(r"--require-hashes --no-deps -r docker/requirements-\w+\.txt", command)
                        torch = '"torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"' in command
                        project = re.search(r"--no-deps --no-build-isolation \.\s*$", command)
                        assert locked or torch or project, command

    if target == "serve":
        from service.settings import Settings

        assert _last(final, "EXPOSE") == env["DIFFIR_PORT"] == "8000"
        health = _last(final, "HEALTHCHECK")
        assert health and "/healthz" in health and "--start-period" in health
        assert "python" in _last(final, "ENTRYPOINT") and '"service"' in _last(final, "ENTRYPOINT")
        for key in [k for k in __import__("os").environ if k.startswith("DIFFIR_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            if key.startswith("DIFFIR_"):
                monkeypatch.setenv(key, value)
        assert Settings().host == "0.0.0.0"
    else:
        assert "torchrun" in _last(final, "ENTRYPOINT")
        assert '"training"' in _last(final, "CMD")


@pytest.mark.parametrize(("name", "build"), [("Dockerfile.cpu", "build"), ("Dockerfile.cuda", "build-serve")])
def test_exports_are_built_into_the_image(name, build):
    """`python -m service prepare` runs at build time into the folder the serving stage copies and
    DIFFIR_PREPARED_DIR names, so a container never exports at start."""
    stages = parse_dockerfile(REPO / "docker" / name)
    by_name = {s["name"]: s for s in stages}
    prepared = _env(stages, by_name["serve"])["DIFFIR_PREPARED_DIR"]
    runs = [rest for i, rest in by_name[build]["instructions"] if i == "RUN"]
    assert any(re.search(rf"python -m service prepare --out {re.escape(prepared)}$", r) for r in runs), runs
    copies = [rest for i, rest in by_name["serve"]["instructions"] if i == "COPY"]
    assert f"--from={build} {prepared} {prepared}" in copies
    health = _last(by_name["serve"], "HEALTHCHECK")
    start_period = int(re.search(r"--start-period=(\d+)s", health).group(1))
    assert start_period <= 90, "liveness answers within seconds of the start: no need for minutes of grace"


def _context_files(root: Path = REPO) -> set[str]:
    """Files docker would send as the build context, computed by docker-py's .dockerignore implementation."""
    from docker.utils.build import exclude_paths

    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    return set(exclude_paths(str(root), patterns))


def test_build_context_excludes_data_runs_venv_and_tests(tmp_path):
    """A copy of the tree (empty files) plus planted files of every kind that must never reach an image."""
    tracked = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"]).stdout.split()
    planted = [
        "data/deblur/train/0001.png",
        "runs/stage2/last.pth",
        "artifacts/deblur.full.onnx",
        "test-output/out.png",
        "shared/data/tasks/x.png",
        ".venv/bin/python",
        ".git/HEAD",
        "tests/service/out/restored.png",
        "service/imaging/sample.jpg",
        "models/weights/stage1.pth",
        "training/__pycache__/x.cpython-311.pyc",
    ]
    for rel in [*tracked, *planted]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    (tmp_path / ".dockerignore").write_text((REPO / ".dockerignore").read_text())
    context = _context_files(tmp_path)
    for rel in planted:
        assert rel not in context, f"{rel} would be sent to the Docker daemon"
    forbidden = (".venv/", ".git/", "tests/", "data/", "runs/", "shared/", "bench/", "deploy/", "k8s/")
    assert not [p for p in context if p.startswith(forbidden)]
    assert not [p for p in context if p.endswith((".png", ".jpg", ".pth", ".ckpt", ".npy")) and "/static/" not in p]
    assert {"pyproject.toml", "models/__init__.py", "service/settings.py"} <= context


def test_build_context_has_what_the_dockerfiles_copy():
    context = _context_files()
    for dockerfile in DOCKERFILES:
        for stage in parse_dockerfile(dockerfile):
            for instr, rest in stage["instructions"]:
                if instr != "COPY" or rest.startswith("--from"):
                    continue
                for src in rest.split()[:-1]:
                    assert src in context or any(p.startswith(src.rstrip("/") + "/") for p in context), (
                        f"{dockerfile.name}: COPY {src} is not in the build context"
                    )
    # The shipped default models (package data of `models`) go into the images.
    for weights in (REPO / "models" / "weights").glob("*"):
        if weights.suffix in (".safetensors", ".json", ".md"):
            assert f"models/weights/{weights.name}" in context


def test_every_package_data_file_reaches_the_images():
    """Non-Python files of the packages (web page, training recipes, shipped weights) are in the build context and
    installed: listed in pyproject's package-data, or copied next to the package by the Dockerfile."""
    from fnmatch import fnmatch

    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    package_data = {
        pkg: re.findall(r'"([^"]+)"', rhs) for pkg, rhs in re.findall(r"^(\w+)\s*=\s*\[(.*)\]", section, re.M)
    }
    installs = {"models": ["Dockerfile.cpu", "Dockerfile.cuda"], "service": ["Dockerfile.cpu", "Dockerfile.cuda"]}
    installs["training"] = ["Dockerfile.cuda"]
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *installs]).stdout.split()
    context = _context_files()
    data_files = [f for f in files if not f.endswith(".py") and not f.endswith(".gitkeep")]
    assert any(f.startswith("service/web/static/") for f in data_files)
    for path in data_files:
        package, rel = path.split("/", 1)
        assert path in context, f"{path} is not in the build context (.dockerignore)"
        if any(fnmatch(rel, pattern) for pattern in package_data.get(package, [])):
            continue
        for dockerfile in installs[package]:
            copied = re.findall(r"copytree\('([^']+)'", (REPO / "docker" / dockerfile).read_text())
            assert any(path.startswith(src.rstrip("/") + "/") for src in copied), f"{dockerfile} leaves out {path}"
