"""The lent GPU machine's situation, rebuilt on a CPU: a fresh virtual environment of one Python holding only
torch, numpy and the GPU image's listed packages that the closure uses (at the versions pip gives), plus the
wheel set `bench.gpu_wheels` computes for exactly that environment.

    python -m bench.gpu_situation [--python python3.11]      # prints the venv's python and the wheel folder

Why: the dev venv holds every package, so a visit run there cannot miss one; in this environment the GPU
visit (`bench/gpu_visit.sh --cpu`) sees what the GPU machine sees, and a wheel missing from the computed set
fails it. The environment and wheels are cached under `.cache/gpu-situation/py<version>/` (ignored by git):
the venv is rebuilt when `gpu_wheels.lock_hash()` (locks, pyproject, the image description) or the torch
version changes, the wheels also when `bench/gpu_wheels.py` does; a clean clone builds both from PyPI (and
pip's configured wheel folders), which takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import gpu_wheels

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "gpu-situation"
PIP = [sys.executable, "-m", "pip"]
"""The resolver and downloader: this interpreter's pip (the project's venv), which reaches the registry."""


@dataclass(frozen=True)
class Situation:
    python: Path
    """The venv's interpreter: the GPU machine's `python3`."""
    wheels: Path
    """The computed carried set for it (with manifest.json)."""
    image: Path
    """The venv's own packages and versions, as `image-versions` records them."""


def torch_version() -> str:
    """The project's torch version: the one the Makefile installs."""
    return re.search(r"^TORCH_VERSION \?= (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)


def interpreter_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2], sep='.')"], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def clean_env() -> dict[str, str]:
    """The environment without this project's venv: no VIRTUAL_ENV, no PYTHONPATH, the venv off PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def build(python: str = "python3.11", cache: Path = CACHE) -> Situation:
    """The venv (rebuilt when the locks, pyproject, the image description or the torch version change) and its
    computed wheels (recomputed when those or the wheel code change)."""
    version = interpreter_version(python)
    home = cache / f"py{version.replace('.', '')}"
    situation = Situation(home / "venv" / "bin" / "python", home / "wheels", home / "image.json")
    venv_key = f"{gpu_wheels.lock_hash()}-torch{torch_version()}"
    wheels_key = f"{venv_key}-{gpu_wheels.files_hash(Path(gpu_wheels.__file__))}"
    env = clean_env()
    if _key(home / "venv.key") != venv_key:
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        subprocess.run([python, "-m", "venv", str(home / "venv")], check=True, env=env)
        closure = gpu_wheels.plan(gpu_wheels.Target(version), {}, PIP)["resolved"]
        listed = json.loads(gpu_wheels.IMAGE_FILE.read_text())["packages"]
        image_side = sorted(n for n in closure if n in listed and n != "numpy")
        install = [str(situation.python), "-m", "pip", "install", "--quiet", "--no-compile"]
        install += [f"torch=={torch_version()}", "numpy"]
        subprocess.run([*install, *image_side], check=True, env=env)
        record = [str(situation.python), "-m", "bench.gpu_wheels", "image-versions"]
        recorded = subprocess.run(record, cwd=ROOT, env=env | {"PYTHONPATH": str(ROOT)}, capture_output=True,
                                  text=True, check=True)  # fmt: skip
        situation.image.write_text(recorded.stdout)
        (home / "venv.key").write_text(venv_key)
    if _key(home / "wheels.key") != wheels_key:
        gpu_wheels.fetch(version, situation.image, situation.wheels, PIP)
        (home / "wheels.key").write_text(wheels_key)
    return situation


def _key(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_situation", description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="python3.11", help="the interpreter the venv is made with")
    args = parser.parse_args(argv)
    situation = build(args.python)
    print(json.dumps({k: str(v) for k, v in situation.__dict__.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
