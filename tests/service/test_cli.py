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
    assert main(["deblur", str(image), "-o", str(tmp_path / "x"), "--device", "gpu"]) == 1
    err = capsys.readouterr().err
    assert "--device: " in err and "not 'gpu'" in err and "DIFFIR_DEVICE" not in err, err  # the flag, not the variable


@pytest.mark.parametrize("command", [["restore", "--help"], ["--help"]])
def test_python_m_service_help_exits_0(command: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "service", *command], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    if command == ["--help"]:  # the installed command's name, and where the other commands are
        assert done.stdout.startswith("usage: diffir-serve ") and "diffir-serve restore TASK" in done.stdout


# --- messages a user can act on ---------------------------------------------------------------------------------
def test_bad_tasks_json_names_the_variable(tmp_path: Path, tasks_env, monkeypatch, capsys) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(encode(gradient(16, 16)))
    monkeypatch.setenv("DIFFIR_TASKS", "{not json")
    assert main(["deblur", str(image), "-o", str(tmp_path / "out")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("diffir-restore: invalid settings: DIFFIR_TASKS: ") and "not valid JSON" in line, line


def test_a_stale_server_setting_does_not_stop_a_local_run(tmp_path: Path, tasks_env, monkeypatch, capsys) -> None:
    """A local run opens no port: DIFFIR_PORT=abc (or any other server-only variable) is not its concern."""
    image = tmp_path / "a.png"
    image.write_bytes(encode(gradient(16, 16)))
    monkeypatch.setenv("DIFFIR_PORT", "abc")
    monkeypatch.setenv("DIFFIR_METRICS_PORT", "abc")
    monkeypatch.setenv("DIFFIR_BACKEND", "torch")
    assert main(["deblur", str(image), "-o", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "a.png").is_file()


def test_an_unreachable_server_is_named(tmp_path: Path, capsys) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    image = tmp_path / "a.png"
    image.write_bytes(encode(gradient(16, 16)))
    assert main(["deblur", str(image), "-o", str(tmp_path / "out"), "--server", url]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"diffir-restore: cannot reach the server at {url}: "), line


def test_existing_outputs_are_counted_in_plain_words(tmp_path: Path, capsys) -> None:
    src = _tree(tmp_path)
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "x.png").write_bytes(b"old")
    assert main(["deblur", str(src / "a" / "x.png"), "-o", str(out / "a")]) == 2
    assert f"diffir-restore: {out / 'a' / 'x.png'} already exists; pass --overwrite" in capsys.readouterr().err
    (out / "b").mkdir()
    for name in ("x.png", "x.jpg"):
        (out / "b" / name).write_bytes(b"old")
    assert main(["deblur", str(src), "-o", str(out)]) == 2
    assert "diffir-restore: 3 outputs already exist: " in capsys.readouterr().err
