"""The wheels a lent GPU machine needs, computed: what `python -m service`, `bench/gpu_check.py`, the `gpu` tests
and the GPU training recipe import, resolved from pyproject and the lock, minus what the GPU image provides.

    python -m bench.gpu_wheels fetch [--python 3.12] [--image bench/gpu_image.json] [--dest wheels/py312]
    python -m bench.gpu_wheels provide --wheels wheels/py312 --site /tmp/diffir-site    # on the GPU machine
    python -m bench.gpu_wheels image-versions > image-packages.json                     # this interpreter's packages

Why computed: the GPU machine has Python 3.12, a CUDA build of torch and its own set of packages, no network,
and never upgrades them; a hand-kept list misses transitive imports (fastapi imports opentelemetry-api,
the HTTP protocol needs httptools) and assumes versions. `fetch` asks pip's own resolver (`pip install
--dry-run --report` for the target Python and platform, binary wheels only) for the closure of `ROOT_EXTRAS`
and `ROOT_PACKAGES` under the lock's pins (`LOCKS`), then leaves out what the image holds at a version every
requirement in that closure accepts. `--image` describes the image: package names with their versions where
known (`bench/gpu_image.json`, from its published list; a GPU visit records the exact one with
`image-versions`). A listed package whose version is not known is carried when its wheel is small
(`UNKNOWN_CARRY_MAX_BYTES`, cheap insurance) and otherwise assumed compatible; `provide` checks every one of
them against the real versions on the machine and fails loudly, so an assumption never goes unnoticed.

`fetch` writes the wheels and `manifest.json` (the closure, the requirement on each package, what is carried
and why) into `--dest`. `provide` runs on the GPU machine with only the standard library and `packaging`: it
unpacks a carried wheel wherever the installed version is missing or incompatible (a wheel of pure Python or
prebuilt extensions is complete once unpacked: no pip, no network, no writable site-packages), puts that
folder first on the path, then checks every requirement of every distribution of the closure as installed
(what `pip check` would say) and reports what is still wrong.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LOCKS = (ROOT / "docker" / "requirements-cpu.txt", ROOT / "docker" / "requirements-train.txt")
"""The serving lock (extras serve + onnxruntime) and the training lock: their pins constrain the resolution."""
ROOT_EXTRAS = ("serve", "onnxruntime", "train")
"""pyproject extras whose requirements are imported on the GPU machine (service, check, training recipe)."""
ROOT_PACKAGES = ("pytest", "pytest-timeout")
"""The `gpu` tests' runner, taken with the version bounds of the `dev` extra."""
IMAGE_ONLY = {
    "torch": "the image's CUDA build; a carried one could not travel and would replace it",
    "diffir-serve": "this project: it travels as the working tree",
}
LEFT_OUT = {
    "imagecodecs": "compressed (LZW/Deflate/JPEG) TIFF uploads only; its ~26 MB wheel does not fit the 64 MiB "
    "the device tool carries, and nothing the GPU check runs decodes such a TIFF",
}
"""Requirements of the root extras that are not carried even when the image lacks them, with the reason."""
UNKNOWN_CARRY_MAX_BYTES = 1_500_000
IMAGE_FILE = ROOT / "bench" / "gpu_image.json"
MANIFEST = "manifest.json"
GLIBC_MAX = 35
"""Newest manylinux tag accepted (glibc 2.35): the GPU image (Ubuntu 24.04, glibc 2.39) and this project's
Debian 12 machines (glibc 2.36) both run such wheels."""


def canon(name: str) -> str:
    """PEP 503 normalised name: `PyYAML`, `pyyaml` and `py_yaml` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _packaging():
    """`packaging` where installed, else pip's vendored copy (the GPU image has both)."""
    try:
        from packaging.markers import Marker
        from packaging.requirements import Requirement
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion, Version
    except ImportError:  # pragma: no cover - depends on the interpreter
        from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef]
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
        from pip._vendor.packaging.specifiers import SpecifierSet  # type: ignore[no-redef]
        from pip._vendor.packaging.version import InvalidVersion, Version  # type: ignore[no-redef]
    return Marker, Requirement, SpecifierSet, Version, InvalidVersion


# --- the target --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A Python version on x86-64 Linux (manylinux), CPython: what pip resolves and downloads for."""

    python: str  # "3.12"

    @property
    def tag(self) -> str:
        return "cp" + self.python.replace(".", "")

    def pip_args(self) -> list[str]:
        args = ["--python-version", self.python, "--implementation", "cp", "--only-binary=:all:"]
        for abi in (self.tag, "abi3", "none"):
            args += ["--abi", abi]
        for n in range(GLIBC_MAX, 16, -1):
            args += ["--platform", f"manylinux_2_{n}_x86_64"]
        for legacy in ("manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "any"):
            args += ["--platform", legacy]
        return args

    def marker_env(self) -> dict[str, str]:
        """Environment markers of the target (pip evaluates dependency markers with the interpreter it runs in)."""
        return {
            "python_version": self.python,
            "python_full_version": self.python + ".0",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": "x86_64",
            "os_name": "posix",
            "extra": "",
        }


# --- the roots and the lock --------------------------------------------------------------------------
def root_requirements() -> list[str]:
    """Requirement strings of `ROOT_EXTRAS` and `ROOT_PACKAGES` (bounds from the `dev` extra), without this
    project's self-references, the image-only packages and `LEFT_OUT`."""
    _, Requirement, _, _, _ = _packaging()
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = project["optional-dependencies"]
    me = canon(project["name"])

    def expand(extra: str) -> list[str]:  # `diffir-serve[models]` inside an extra stands for that extra
        out = []
        for spec in extras[extra]:
            req = Requirement(spec)
            out += [r for e in sorted(req.extras) for r in expand(e)] if canon(req.name) == me else [spec]
        return out

    wanted = list(project.get("dependencies", [])) + [r for extra in ROOT_EXTRAS for r in expand(extra)]
    dev = {canon(Requirement(r).name): r for r in extras["dev"]}
    wanted += [dev.get(canon(p), p) for p in ROOT_PACKAGES]
    out, seen = [], set()
    for spec in wanted:
        name = canon(Requirement(spec).name)
        if name in IMAGE_ONLY or name in LEFT_OUT or name in seen:
            continue
        seen.add(name)
        out.append(spec)
    return out


def lock_pins(locks: tuple[Path, ...] = LOCKS) -> dict[str, str]:
    """name -> version from the hashed lock files (the same package pinned differently in two locks is an error)."""
    pins: dict[str, str] = {}
    for lock in locks:
        for line in lock.read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line)
            if not m:
                continue
            name, version = canon(m.group(1)), m.group(2)
            if pins.get(name, version) != version:
                raise ValueError(f"{name} is pinned to {pins[name]} and {version} in {', '.join(map(str, locks))}")
            pins[name] = version
    return pins


def lock_hash(locks: tuple[Path, ...] = LOCKS) -> str:
    """A short hash of what the resolution starts from: the locks, pyproject and the image description."""
    return files_hash(*locks, PYPROJECT, IMAGE_FILE)


def files_hash(*paths: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


# --- resolution ---------------------------------------------------------------------------------------
def resolve(target: Target, roots: list[str], pins: dict[str, str], pip: list[str]) -> list[dict[str, Any]]:
    """pip's report of the closure of `roots` for `target`, constrained to the lock's pins."""
    with tempfile.TemporaryDirectory(prefix="diffir-wheels-") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items()) if n not in IMAGE_ONLY))
        report = Path(tmp) / "report.json"
        cmd = [*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report)]
        cmd += [*target.pip_args(), "-c", str(constraints), *roots]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"pip could not resolve the closure for Python {target.python}:\n{res.stderr[-3000:]}")
        return json.loads(report.read_text())["install"]


def requirement_map(target: Target, roots: list[str], items: list[dict[str, Any]]) -> dict[str, list[str]]:
    """name -> every specifier the roots and the resolved distributions put on it (markers for `target`)."""
    _, Requirement, _, _, _ = _packaging()
    env = target.marker_env()
    specs: dict[str, list[str]] = {}

    def add(req_text: str, extras: list[str]) -> None:
        req = Requirement(req_text)
        if req.marker is not None and not any(req.marker.evaluate(env | {"extra": e}) for e in ["", *extras]):
            return
        specs.setdefault(canon(req.name), [])
        if str(req.specifier):
            specs[canon(req.name)].append(str(req.specifier))

    for r in roots:
        add(r, [])
    for item in items:
        meta = item["metadata"]
        for r in meta.get("requires_dist") or []:
            add(r, item.get("requested_extras") or [])
    return specs


def satisfies(version: str | None, specs: list[str]) -> bool:
    _, _, SpecifierSet, Version, InvalidVersion = _packaging()
    if version is None:
        return False
    try:
        v = Version(version)
    except InvalidVersion:
        return False
    return all(v in SpecifierSet(s, prereleases=True) for s in specs)


def plan(target: Target, image: dict[str, str | None], pip: list[str]) -> dict[str, Any]:
    """The manifest: the closure, each requirement, and per package whether the image provides it or a wheel travels."""
    roots = root_requirements()
    items = resolve(target, roots, lock_pins(), pip)
    specs = requirement_map(target, roots, items)
    image = {canon(k): v for k, v in image.items()}
    resolved, carried, from_image = {}, {}, {}
    for item in items:
        name, version = canon(item["metadata"]["name"]), item["metadata"]["version"]
        resolved[name] = version
        need = specs.get(name, [])
        url = item["download_info"]["url"]
        entry = {"version": version, "file": url.rsplit("/", 1)[-1].split("#")[0], "url": url}
        if name not in image:
            carried[name] = entry | {"why": "not in the image"}
        elif image[name] is not None and satisfies(image[name], need):
            from_image[name] = {"version": image[name], "needs": need}
        elif image[name] is not None:
            carried[name] = entry | {"why": f"the image's {image[name]} does not satisfy {', '.join(need)}"}
        else:
            from_image[name] = {"version": None, "needs": need, "assumed": True}
    return {
        "python": target.python,
        "roots": roots,
        "left_out": LEFT_OUT,
        "requirements": {n: specs.get(n, []) for n in sorted(resolved)},
        "resolved": dict(sorted(resolved.items())),
        "carried": dict(sorted(carried.items())),
        "from_image": dict(sorted(from_image.items())),
    }


def download(manifest: dict[str, Any], dest: Path, target: Target, pip: list[str]) -> None:
    """The carried wheels into `dest` (exact pins, no dependencies: the closure is already resolved); then
    the small wheels of packages the image holds at an unknown version join them (`UNKNOWN_CARRY_MAX_BYTES`)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    assumed = [n for n, e in manifest["from_image"].items() if e.get("assumed")]
    names = list(manifest["carried"]) + assumed
    pins = [f"{n}=={manifest['resolved'][n]}" for n in names]
    cmd = [*pip, "download", "--quiet", "--no-deps", *target.pip_args(), "--dest", str(dest), *pins]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"pip download failed:\n{res.stderr[-3000:]}")
    files = {canon(w.name.split("-")[0]): w for w in dest.glob("*.whl")}
    for name in names:
        whl = files.get(name)
        if whl is None:
            raise RuntimeError(f"pip downloaded no wheel for {name}")
        if name in manifest["carried"]:
            manifest["carried"][name].update(file=whl.name, bytes=whl.stat().st_size)
        elif whl.stat().st_size <= UNKNOWN_CARRY_MAX_BYTES:
            manifest["carried"][name] = {
                "version": manifest["resolved"][name],
                "file": whl.name,
                "bytes": whl.stat().st_size,
                "why": "in the image at an unknown version; small, so carried in case it is incompatible",
            }
            manifest["from_image"].pop(name)
        else:
            whl.unlink()
    manifest["carried"] = dict(sorted(manifest["carried"].items()))
    manifest["carried_bytes"] = sum(e["bytes"] for e in manifest["carried"].values())


def fetch(python: str, image_file: Path, dest: Path, pip: list[str] | None = None) -> dict[str, Any]:
    target = Target(python)
    pip = pip or [sys.executable, "-m", "pip"]
    image_doc = json.loads(image_file.read_text())
    image_doc = image_doc.get("image", image_doc)  # a visit's visit.json holds the record under "image"
    manifest = plan(target, image_doc["packages"], pip)
    manifest["image"] = {"file": image_file.name, "source": image_doc.get("source", "")}
    manifest["image"]["python"] = image_doc.get("python")
    download(manifest, dest, target, pip)
    manifest["lock_hash"] = lock_hash()
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# --- on the GPU machine -------------------------------------------------------------------------------
def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def provide(wheels: Path, site: Path) -> dict[str, Any]:
    """Unpack the carried wheels this interpreter needs into `site`, put it first on `sys.path`, and check
    every requirement of the closure as now installed. Returns what was used from where and what is wrong
    (`problems`, empty when everything the steps need is there at an accepted version)."""
    manifest_path = wheels / MANIFEST
    if not manifest_path.is_file():  # a machine with everything installed (a dev venv); the import check decides
        return {"problems": [], "note": f"no {manifest_path}: the installed packages are used as they are"}
    manifest = json.loads(manifest_path.read_text())
    report: dict[str, Any] = {"python": sys.version.split()[0], "wheels_for": manifest["python"], "unpacked": {}}
    if manifest["python"] != f"{sys.version_info.major}.{sys.version_info.minor}":
        report["problems"] = [f"the wheels are for Python {manifest['python']}, this is {report['python']}"]
        return report
    need: dict[str, list[str]] = manifest["requirements"]
    site.mkdir(parents=True, exist_ok=True)
    for name, entry in manifest["carried"].items():
        have = installed_version(name)
        if satisfies(have, need.get(name, [])):
            continue
        if not (wheels / entry["file"]).is_file():  # reported by the check below, with what needs it
            report["unpacked"][name] = {"installed": have, "carried": None, "missing_file": entry["file"]}
            continue
        with zipfile.ZipFile(wheels / entry["file"]) as whl:
            whl.extractall(site)
        report["unpacked"][name] = {"installed": have, "carried": entry["version"]}
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    report["versions"] = {name: installed_version(name) for name in manifest["resolved"]}
    report["problems"] = check_installed(list(manifest["resolved"]), need)
    return report


def check_installed(names: list[str], need: dict[str, list[str]]) -> list[str]:
    """Every package of the closure present at a version its dependents (as installed) and the roots accept."""
    _, Requirement, _, _, _ = _packaging()
    problems = []
    for name in names:
        have = installed_version(name)
        if have is None:
            problems.append(f"{name}: not installed and no wheel carried")
        elif not satisfies(have, need.get(name, [])):
            problems.append(f"{name} {have}: the closure needs {', '.join(need[name])}")
    for name in names:
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = canon(req.name)
            if dep not in names:
                continue
            have = installed_version(dep)
            if have is not None and str(req.specifier) and not satisfies(have, [str(req.specifier)]):
                problems.append(f"{name} {installed_version(name)} needs {dep}{req.specifier}, found {have}")
    return problems


def image_versions() -> dict[str, Any]:
    """This interpreter's distributions, in the format of `bench/gpu_image.json`."""
    packages = {canon(d.metadata["Name"]): d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
    return {
        "source": f"recorded by `python -m bench.gpu_wheels image-versions` with {sys.executable}",
        "python": sys.version.split()[0],
        "packages": dict(sorted(packages.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_wheels", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="compute the carried set and download it with its manifest")
    f.add_argument("--python", default="3.12", help="the target Python (GPU machine: 3.12)")
    f.add_argument("--image", type=Path, default=IMAGE_FILE, help="the image's packages (bench/gpu_image.json)")
    f.add_argument("--dest", type=Path, help="default: wheels/py<version> (ignored by git)")
    p = sub.add_parser("provide", help="on the target: unpack what is missing or incompatible, check the closure")
    p.add_argument("--wheels", type=Path, required=True)
    p.add_argument("--site", type=Path, required=True)
    sub.add_parser("image-versions", help="print this interpreter's packages as JSON")
    args = parser.parse_args(argv)
    if args.command == "image-versions":
        json.dump(image_versions(), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if args.command == "provide":
        report = provide(args.wheels, args.site)
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 1 if report["problems"] else 0
    dest = args.dest or ROOT / "wheels" / f"py{args.python.replace('.', '')}"
    manifest = fetch(args.python, args.image, dest)
    for name, entry in manifest["carried"].items():
        print(f"carried    {name}=={entry['version']}  {entry['bytes'] / 2**20:6.2f} MiB  {entry['why']}")
    for name, entry in manifest["from_image"].items():
        how = "assumed (version unknown)" if entry.get("assumed") else f"image has {entry['version']}"
        print(f"from image {name}: {how}; needs {', '.join(entry['needs']) or 'any'}")
    print(f"{len(manifest['carried'])} wheels, {manifest['carried_bytes'] / 2**20:.2f} MiB in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
