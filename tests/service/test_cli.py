"""`diffir-restore` / `python -m service restore`: no output lost to a name collision, failures reported
while the run goes on, existing outputs protected, --device / --tile, no carriage returns off a terminal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from service.cli import main, plan
from tests.service.conftest import encode, gradient

ROOT = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> Path:
    """in/a/x.png, in/b/x.png, in/b/x.jpg (three outputs that a flat folder would squash into two)."""
    src = root / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "a" / "x.png").write_bytes(encode(gradient(40, 24)))
    (src / "b" / "x.png").write_bytes(encode(gradient(24, 40)))
    (src / "b" / "x.jpg").write_bytes(encode(gradient(32, 16), "JPEG"))
    return src


def test_plan_mirrors_folders_and_never_reuses_a_path(tmp_path: Path) -> None:
    src, out = _tree(tmp_path), tmp_path / "out"
    rel = lambda items: sorted(str(i.target.relative_to(out)) for i in items)  # noqa: E731
    assert rel(plan([src], out, "", None)) == ["a/x.png", "b/x.jpg", "b/x.png"]  # JPEG stays JPEG by default
    forced = plan([src], out, "", "png")  # b/x.jpg and b/x.png both want b/x.png
    assert rel(forced) == ["a/x.png", "b/x.png", "b/x_jpg.png"]
    assert {i.source.name for i in forced if i.target.name == "x.png" and i.target.parent.name == "b"} == {"x.png"}
    assert rel(plan([src], out, "_x4", "webp")) == ["a/x_x4.webp", "b/x_jpg_x4.webp", "b/x_png_x4.webp"]
    # Two explicit files of one name, and the same folder given twice: numbered, nothing shared.
    twice = plan([src / "a" / "x.png", src / "b" / "x.png", src, src], out, "", None)
    targets = [i.target for i in twice]
    assert len(set(targets)) == len(targets) == 8


@pytest.fixture
def tasks_env(monkeypatch, checkpoints) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("DIFFIR_")]:
        monkeypatch.delenv(key)
    tasks = {name: {"checkpoint": str(path)} for name, path in checkpoints.items()}
    monkeypatch.setenv("DIFFIR_TASKS", json.dumps(tasks))
    monkeypatch.setenv("DIFFIR_DEVICE", "cpu")


def test_folder_run_keeps_every_output_reports_failures_and_goes_on(tmp_path: Path, tasks_env, capsys) -> None:
    src, out = _tree(tmp_path), tmp_path / "out"
    (src / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature, then nothing
    (src / "b" / "y.png").write_bytes(encode(gradient(16, 16)))  # sorted after broken.png: the run went on
    code = main(["deblur", str(src), "-o", str(out), "--format", "png"])
    err = capsys.readouterr().err
    assert code == 1, err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["a/x.png", "b/x.png", "b/x_jpg.png", "b/y.png"]
    sizes = {name: Image.open(out / name).size for name in written}
    assert sizes == {"a/x.png": (40, 24), "b/x.png": (24, 40), "b/x_jpg.png": (32, 16), "b/y.png": (16, 16)}
    assert "broken.png failed: undecodable_image" in err
    assert "4 restored, 0 skipped, 1 failed of 5" in err
    assert "\r" not in err  # stderr is not a terminal here: plain lines, no progress-bar redraws
    assert "5/5" in err

    # A second run protects what is there, unless told to skip or overwrite.
    assert main(["deblur", str(src), "-o", str(out), "--format", "png"]) == 2
    assert "--overwrite or --skip-existing" in capsys.readouterr().err
    assert main(["deblur", str(src), "-o", str(out), "--format", "png", "--skip-existing"]) == 1
    assert "0 restored, 4 skipped, 1 failed" in capsys.readouterr().err
    (src / "b" / "broken.png").unlink()
    (out / "a" / "x.png").write_bytes(b"stale")
    assert main(["deblur", str(src), "-o", str(out), "--format", "png", "--overwrite", "-q"]) == 0
    assert Image.open(out / "a" / "x.png").size == (40, 24)
    assert "4 restored, 0 skipped, 0 failed" in capsys.readouterr().err


def test_tile_flag_tiles_and_device_flag_is_checked(tmp_path: Path, tasks_env, capsys) -> None:
    image = tmp_path / "big.png"
    image.write_bytes(encode(gradient(96, 80)))
    whole, tiled = tmp_path / "whole", tmp_path / "tiled"
    assert main(["deblur", str(image), "-o", str(whole), "--tile", "0"]) == 0
    assert main(["deblur", str(image), "-o", str(tiled), "--tile", "48", "--device", "cpu"]) == 0
    a, b = (Image.open(p / "big.png") for p in (whole, tiled))
    assert a.size == b.size == (96, 80)
    assert a.tobytes() != b.tobytes()  # 48-pixel tiles: the restoration really went tile by tile
    capsys.readouterr()
    assert main(["deblur", str(image), "-o", str(tmp_path / "x"), "--device", "tpu"]) == 1
    assert "DIFFIR_DEVICE" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["restore", "--help"], ["--help"]])
def test_python_m_service_help_exits_0(command: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "service", *command], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
