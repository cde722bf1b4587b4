"""The package as a user installs it: the client without torch in a fresh virtualenv, entry points, the
Python floor, every command's --help, and the images' hashed lock files against pyproject."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
LOCKS = {  # lock file -> the extras it installs (docker/lock.sh)
    "requirements-cpu.txt": ("serve", "onnxruntime"),
    "requirements-cuda.txt": ("serve", "onnxruntime-gpu"),
    "requirements-train.txt": ("train",),
}
IMAGE_PLATFORM = {"python_version": "3.11", "python_full_version": "3.11.14", "sys_platform": "linux"}
IMAGE_PLATFORM |= {"platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython"}
IMAGE_PLATFORM |= {"platform_python_implementation": "CPython", "os_name": "posix"}


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)


# --- the client without torch ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with only the built wheel and its core dependencies (resolved from PyPI by uv).

    The wheel is built from the sdist, as from a fresh clone: a checkout's leftover `build/` folder would
    otherwise carry files into it that a clone's `pip install .` never sees."""
    uv = Path(sys.executable).with_name("uv")
    root = tmp_path_factory.mktemp("client")
    built = run([str(uv), "build", "--out-dir", str(root / "dist"), "--quiet", str(ROOT)])
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("diffir_serve-*.whl")
    assert wheel.stat().st_size < 1_000_000, f"the client wheel is {wheel.stat().st_size} bytes: weights in it?"
    venv = root / "venv"
    made = run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)])
    assert made.returncode == 0, made.stderr
    installed = run([str(uv), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(wheel)])
    assert installed.returncode == 0, installed.stderr
    return venv


@pytest.fixture(scope="module")
def remote_server():
    """A real HTTP server in this process (identity models: the point is the client, not the network)."""
    import uvicorn

    from service.http.app import create_app
    from tests.service.conftest import identity_backends
    from tests.service.test_server import free_port

    port = free_port()
    app = create_app(backends=identity_backends())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    import httpx

    for _ in range(300):  # bounded: 30 s
        if server.started:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
        threading.Event().wait(0.1)
    else:
        raise AssertionError("in-process server not ready")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def test_client_and_its_cli_install_and_run_without_torch(client_venv: Path, remote_server: str, tmp_path) -> None:
    from tests.service.conftest import encode, gradient

    py = str(client_venv / "bin" / "python")
    names = {canonicalize_name(d.split("==")[0]) for d in run([py, "-m", "pip", "freeze"]).stdout.split()}
    if not names:  # uv's virtualenvs have no pip; ask uv
        uv = Path(sys.executable).with_name("uv")
        listed = run([str(uv), "pip", "freeze", "--python", py]).stdout.split()
        names = {canonicalize_name(d.split("==")[0]) for d in listed}
    assert "diffir-serve" in names and "httpx" in names
    heavy = {"torch", "numpy", "pillow", "fastapi", "onnxruntime"} & names
    assert not heavy, f"the client install pulled in {heavy}"
    imported = run([py, "-c", "import sys, service.client, service.cli; print(*sys.modules)"])
    assert imported.returncode == 0, imported.stderr
    modules = set(imported.stdout.split())
    assert not {"torch", "models", "numpy", "PIL"} & modules, "the client imported model code"

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(encode(gradient(40, 24)))
    restore = client_venv / "bin" / "diffir-restore"
    done = run([str(restore), "sr-x4", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--server", remote_server])
    assert done.returncode == 0, done.stderr
    from PIL import Image

    assert Image.open(tmp_path / "out" / "a.png").size == (160, 96)  # the server's 4x answer, written locally
    serve = run([str(client_venv / "bin" / "diffir-serve")])
    assert serve.returncode == 1 and "diffir-serve[serve]" in serve.stderr


def _installed_commands(venv: Path) -> list[str]:
    py = str(venv / "bin" / "python")
    listed = run(
        [py, "-c", "from importlib import metadata as m; print(*m.entry_points(group='console_scripts').names)"]
    )
    return sorted(n for n in listed.stdout.split() if n.startswith("diffir-"))


def test_the_client_install_is_only_a_client_and_every_command_answers(client_venv: Path, tmp_path) -> None:
    """No torch and no weights; every installed command's --help exits 0; what needs an extra says which, in one
    line (never a traceback)."""
    assert not list(client_venv.rglob("*.safetensors")), "the client install carries model weights"
    assert not list(client_venv.rglob("torch/__init__.py"))
    commands = _installed_commands(client_venv)
    assert commands == ["diffir-restore", "diffir-serve", "diffir-train"]
    bin_ = client_venv / "bin"
    for argv in [[c, "--help"] for c in commands] + [
        ["diffir-serve", "restore", "--help"],
        ["diffir-train", "data", "--help"],
    ]:
        done = run([str(bin_ / argv[0]), *argv[1:]])
        assert done.returncode == 0 and "usage" in done.stdout.lower(), (argv, done.stdout, done.stderr)
    (tmp_path / "in.png").write_bytes(b"not needed: the command stops before reading it")
    needs = {
        ("diffir-serve",): "serve",
        ("diffir-serve", "prepare", "--out", str(tmp_path / "p")): "serve",
        ("diffir-restore", "deblur", str(tmp_path / "in.png"), "-o", str(tmp_path / "out")): "serve",
        ("diffir-train", "stage1", "--help"): "train",
        ("diffir-train", "evaluate", "--task", "deblur"): "train",
    }
    for argv, extra in needs.items():
        done = run([str(bin_ / argv[0]), *argv[1:]])
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1, (argv, done.stderr)
        assert f"pip install 'diffir-serve[{extra}]'" in lines[0] and "Traceback" not in done.stderr, (argv, lines)


# --- metadata -----------------------------------------------------------------------------------------
def test_torch_is_never_a_core_dependency() -> None:
    assert not [r for r in PROJECT["dependencies"] if Requirement(r).name in ("torch", "numpy", "pillow")]
    extras = PROJECT["optional-dependencies"]
    assert any(Requirement(r).name == "torch" for r in extras["models"])
    assert "diffir-serve[models]" in extras["serve"] and "diffir-serve[models]" in extras["train"]


def test_onnxruntime_builds_are_separate_exclusive_extras() -> None:
    extras = PROJECT["optional-dependencies"]
    holders = {name: {Requirement(r).name for r in reqs} for name, reqs in extras.items()}
    assert [n for n, reqs in holders.items() if "onnxruntime" in reqs] == ["onnxruntime"]
    assert [n for n, reqs in holders.items() if "onnxruntime-gpu" in reqs] == ["onnxruntime-gpu"]
    assert PYPROJECT["tool"]["uv"]["conflicts"] == [[{"extra": "onnxruntime"}, {"extra": "onnxruntime-gpu"}]]
    # Nothing the project installs asks for both (Makefile, Dockerfiles via their lock files).
    for text in [(ROOT / "Makefile").read_text(), *[(ROOT / "docker" / f).read_text() for f in LOCKS]]:
        assert not ("onnxruntime-gpu" in text and re.search(r"(^|[\s,\[])onnxruntime([\s,\]=]|$)", text, re.M))


def test_entry_points_urls_and_build_floor() -> None:
    assert PROJECT["scripts"] == {
        "diffir-serve": "service.__main__:main",
        "diffir-restore": "service.cli:main",
        "diffir-train": "training.__main__:main",
    }
    assert {"Homepage", "Source", "Issues"} <= set(PROJECT["urls"])
    (setuptools,) = [Requirement(r) for r in PYPROJECT["build-system"]["requires"] if "setuptools" in r]
    assert setuptools.specifier.contains("77.0") and not setuptools.specifier.contains("76.9")  # SPDX license
    floors = {
        name: {str(s) for s in Requirement(r).specifier}
        for name, reqs in PROJECT["optional-dependencies"].items()
        for r in reqs
        if Requirement(r).name == "pillow"
    }
    assert len(set(map(frozenset, floors.values()))) == 1, f"Pillow floors differ between extras: {floors}"


def test_python_floor_is_the_version_ci_runs() -> None:
    """requires-python claims 3.11; .ci/run runs exactly 3.11, and the installed metadata says the same."""
    assert PROJECT["requires-python"] == ">=3.11"
    assert "python3.11" in (ROOT / ".ci" / "run").read_text()
    assert metadata.metadata("diffir-serve")["Requires-Python"] == ">=3.11"


COMMANDS = [
    ["-m", "training", "--help"],
    *[["-m", "training", c, "--help"] for c in ("stage1", "stage2", "evaluate", "probe", "export", "data")],
    ["-m", "training.data", "fetch", "--help"],
    ["-m", "service", "--help"],
    ["-m", "service", "restore", "--help"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_help_exits_0(command: list[str]) -> None:
    done = run([sys.executable, *command], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


# --- lock files -----------------------------------------------------------------------------------------
def _lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """canonical name -> (version, hashes) from a `uv pip compile --generate-hashes` file."""
    text = (ROOT / "docker" / name).read_text()
    pins = {}
    for block in re.split(r"\n(?=\S)", text):
        if block.startswith("#") or not block.strip():
            continue
        head = block.split()[0]
        pkg, _, version = head.partition("==")
        assert version, f"{name}: not an exact pin: {head}"
        pins[canonicalize_name(pkg)] = (version, re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def _requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """pyproject's requirements for these extras, self-references (`diffir-serve[models]`) expanded."""
    wanted, seen, out = list(extras), set(), []
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in PROJECT["optional-dependencies"][extra]:
            req = Requirement(text)
            if req.name == PROJECT["name"]:
                wanted += sorted(req.extras)
            else:
                out.append(req)
    return out + [Requirement(r) for r in PROJECT["dependencies"]]


@pytest.mark.parametrize(("lock", "extras"), LOCKS.items())
def test_lock_pins_every_requirement_with_hashes(lock: str, extras: tuple[str, ...]) -> None:
    pins = _lock(lock)
    assert pins, lock
    assert not [n for n, (_, hashes) in pins.items() if not hashes], f"{lock}: pins without a hash"
    assert "torch" not in pins  # from PyTorch's own index, pinned by version in the Dockerfiles
    problems = []
    for req in _requirements(extras):
        if req.name == "torch" or (req.marker and not req.marker.evaluate(IMAGE_PLATFORM)):
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None or not req.specifier.contains(pinned[0], prereleases=True):
            problems.append(f"pyproject needs {req}, {lock} has {pinned and pinned[0]} (run `make lock`)")
    # The lock is closed: every pinned package's own requirements (where this environment has that very
    # release installed, so its metadata is at hand) are pinned too, at a version they accept.
    for name, (version, _) in pins.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if dist.version.split("+")[0] != version:
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker and not req.marker.evaluate({**IMAGE_PLATFORM, "extra": ""}):
                continue
            dep = pins.get(canonicalize_name(req.name))
            if dep is None or not req.specifier.contains(dep[0], prereleases=True):
                problems.append(f"{name}=={version} needs {req}, {lock} has {dep and dep[0]}")
    assert not problems, "\n".join(problems)


def test_images_install_their_own_lock() -> None:
    cpu = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    cuda = (ROOT / "docker" / "Dockerfile.cuda").read_text()
    assert "--require-hashes --no-deps -r docker/requirements-cpu.txt" in cpu
    assert "--require-hashes --no-deps -r docker/requirements-cuda.txt" in cuda
    assert "--require-hashes --no-deps -r docker/requirements-train.txt" in cuda
    for text in (cpu, cuda):
        assert "TORCH_VERSION=2.13.0" in text and "pip check" in text
        assert "package-data does not list" not in text
        # Package data reaches the images through the wheel; the one copy is the shipped weights, which no
        # wheel carries (`pip install .` is the client alone) and which go next to the installed `models`.
        assert set(re.findall(r"copytree\('([^']+)'", text)) == {"models/weights"}
        assert "pip uninstall" not in text
    assert Marker("python_version >= '3.11'").evaluate(IMAGE_PLATFORM)


def test_make_serve_installs_only_serving_with_cpu_torch() -> None:
    """`make serve`'s environment: CPU torch from PyTorch's CPU index, then `.[serve,onnxruntime]` and nothing
    else; the dev stack (Playwright, schemathesis, ...) only for `make test`."""
    text = (ROOT / "Makefile").read_text()
    serve_recipe = text.split("$(SERVE_STAMP): pyproject.toml", 1)[1].split("\n\n", 1)[0]
    installs = re.findall(r"pip install --quiet (.+)", serve_recipe)
    assert installs == ["--upgrade pip", "$(TORCH_PIP)", '-e ".[serve,onnxruntime]"'], installs
    assert "TORCH_INDEX ?= https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"^serve: \$\(SERVE_STAMP\)$", text, re.M)
    assert re.search(r"^test: \$\(STAMP\)", text, re.M) and '-e ".[serve,onnxruntime,train,dev]"' in text
