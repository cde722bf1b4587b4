"""`make train-defaults` runs the right stages in order and ships the final checkpoint of each task."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import defaults


@pytest.fixture
def calls(monkeypatch) -> list[list[str]]:
    seen: list[list[str]] = []

    def fake_call(cmd):
        seen.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        (out / f"s{cmd[3][-1]}").mkdir(parents=True, exist_ok=True)
        (out / f"s{cmd[3][-1]}" / "state.pt").write_bytes(b"")
        return 0

    monkeypatch.setattr(defaults.subprocess, "call", fake_call)
    return seen


def _arg(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_a_task_with_a_continuation_recipe_runs_three_stages(tmp_path, calls):
    assert defaults.continue_config("deblur") is not None
    assert defaults.run_task("deblur", tmp_path, ["--threads", "1"], (0.0, 0.0)) == 0
    assert [c[3] for c in calls] == ["stage1", "stage2", "stage2"]
    cont = calls[2]
    run = tmp_path / "deblur"
    assert _arg(cont, "--config").endswith("deblur-s2-continue.toml")
    assert _arg(cont, "--out") == str(run / "continue")
    assert _arg(cont, "--init") == str(run / "s1" / "model_latest.safetensors")
    assert _arg(cont, "--init-student") == str(run / "s2" / "model_latest.safetensors")
    assert "--resume" not in cont and cont[-2:] == ["--threads", "1"]
    calls.clear()  # a second run resumes every stage from its state file
    defaults.run_task("deblur", tmp_path, [], (0.0, 0.0))
    assert all("--resume" in c for c in calls)


def test_a_task_without_one_stops_after_stage_2(tmp_path, calls):
    assert defaults.continue_config("sr-x4") is None
    defaults.run_task("sr-x4", tmp_path, [], (5.0, 0.0))
    assert [c[3] for c in calls] == ["stage1", "stage2"]
    assert _arg(calls[0], "--max-minutes") == "5.0" and "--max-minutes" not in calls[1]


def test_ship_copies_the_final_stage(tmp_path):
    for stage_dir, tag in (("deblur/s2", b"s2"), ("deblur/continue/s2", b"cont")):
        d = tmp_path / "runs" / stage_dir
        d.mkdir(parents=True)
        (d / "model_latest.safetensors").write_bytes(tag)
        (d / "model_latest.json").write_text("{}")
    dst = defaults.ship("deblur", tmp_path / "runs", tmp_path / "weights")
    assert dst.read_bytes() == b"cont" and dst.with_suffix(".json").is_file()
    with pytest.raises(FileNotFoundError, match="no stage-2 checkpoint"):
        defaults.ship("sr-x4", tmp_path / "runs", tmp_path / "weights")
