"""`bench.gpu_wheels`: which packages travel as wheels to the GPU machine, and what `provide` does there."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

from bench import gpu_wheels


def _item(name: str, version: str, requires: list[str], extras: list[str] | None = None) -> dict:
    url = f"https://files.example/{name}-{version}-py3-none-any.whl"
    meta = {"name": name, "version": version, "requires_dist": requires}
    return {"metadata": meta, "download_info": {"url": url}, "requested_extras": extras}


def test_the_roots_are_pyprojects_extras_without_torch_or_the_left_out_codec():
    roots = {gpu_wheels.canon(r.split(">")[0].split("=")[0].split("[")[0]) for r in gpu_wheels.root_requirements()}
    assert {"fastapi", "uvicorn", "pydantic-settings", "httpx", "safetensors", "pytest", "onnxruntime"} <= roots
    assert {"opencv-python-headless", "scipy"} <= roots  # the training recipe's
    assert not roots & {"torch", "imagecodecs", "diffir-serve", "ruff"}


def test_lock_pins_agree_between_the_locks():
    pins = gpu_wheels.lock_pins()
    assert pins["fastapi"] and pins["numpy"] and "torch" not in pins


def test_a_package_travels_unless_the_image_holds_an_accepted_version(monkeypatch):
    items = [
        _item("pydantic", "2.14.4", ["typing-extensions>=4.16", 'tomli>=1; python_version < "3.11"']),
        _item("typing_extensions", "4.16.0", []),
        _item("fastapi", "0.165.0", ["pydantic>=2.9", "opentelemetry-api>=1.20"]),
        _item("opentelemetry-api", "1.45.2", []),
        _item("numpy", "2.4.6", []),
        _item("PyYAML", "6.0.4", []),
    ]
    monkeypatch.setattr(gpu_wheels, "resolve", lambda *a: items)
    monkeypatch.setattr(gpu_wheels, "root_requirements", lambda: ["fastapi>=0.110", "numpy>=1.26", "pyyaml"])
    image = {"typing-extensions": "4.15.0", "numpy": "2.5.2", "pyyaml": None, "opentelemetry_api": "1.45.2"}
    manifest = gpu_wheels.plan(gpu_wheels.Target("3.12"), image, [])
    carried = manifest["carried"]
    assert set(carried) == {"pydantic", "fastapi", "typing-extensions"}
    assert carried["typing-extensions"]["why"] == "the image's 4.15.0 does not satisfy >=4.16"
    assert carried["fastapi"]["why"] == "not in the image"
    assert manifest["from_image"]["numpy"] == {"version": "2.5.2", "needs": [">=1.26"]}
    assert manifest["from_image"]["pyyaml"]["assumed"] is True  # listed without a version
    assert manifest["from_image"]["opentelemetry-api"]["version"] == "1.45.2"
    assert "tomli" not in manifest["requirements"], "a marker false on 3.12 puts no requirement"


def _wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> str:
    file = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(folder / file, "w") as whl:
        whl.writestr(f"{name}/__init__.py", f"VERSION = {version!r}\n")
        meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
        whl.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return file


def test_provide_unpacks_what_is_missing_or_too_old_and_reports_what_is_still_wrong(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    carried = {
        "diffir-probe-a": {"version": "2.0", "file": _wheel(wheels, "diffir_probe_a", "2.0", ("diffir-probe-b>=1",))},
        "diffir-probe-b": {"version": "1.5", "file": _wheel(wheels, "diffir_probe_b", "1.5")},
        "diffir-probe-c": {"version": "1.0", "file": "diffir_probe_c-1.0-py3-none-any.whl"},  # taken away
    }
    old = tmp_path / "old-site"  # an older diffir-probe-b already "installed" on the machine
    old.mkdir()
    with zipfile.ZipFile(tmp_path / _wheel(tmp_path, "diffir_probe_b", "0.9")) as whl:
        whl.extractall(old)
    manifest = {
        "python": python,
        "requirements": {"diffir-probe-a": [], "diffir-probe-b": [">=1"], "diffir-probe-c": []},
        "resolved": {"diffir-probe-a": "2.0", "diffir-probe-b": "1.5", "diffir-probe-c": "1.0"},
        "carried": carried,
    }
    (wheels / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(sys, "path", [str(old), *sys.path])
    report = gpu_wheels.provide(wheels, tmp_path / "site")
    assert report["unpacked"]["diffir-probe-a"] == {"installed": None, "carried": "2.0"}
    assert report["unpacked"]["diffir-probe-b"] == {"installed": "0.9", "carried": "1.5"}
    assert report["versions"]["diffir-probe-b"] == "1.5", "the unpacked wheel shadows the old version"
    assert report["problems"] == ["diffir-probe-c: not installed and no wheel carried"]
    import diffir_probe_b

    assert diffir_probe_b.VERSION == "1.5"
    for mod in ("diffir_probe_a", "diffir_probe_b"):
        sys.modules.pop(mod, None)


def test_provide_refuses_wheels_of_another_python(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"python": "2.7", "carried": {}}))
    assert gpu_wheels.provide(tmp_path, tmp_path / "site")["problems"][0].startswith("the wheels are for Python 2.7")


CASES = [("4.15.0", [">=4.16"], False), ("4.16.0", [">=4.16"], True), (None, [], False), ("2.5.2", ["<2.7,>=2"], True)]


@pytest.mark.parametrize(("version", "specs", "ok"), CASES)
def test_satisfies(version, specs, ok):
    assert gpu_wheels.satisfies(version, specs) is ok
