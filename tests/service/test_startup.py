"""Start-up that talks: the port answers while models load, `/readyz` says what is happening, every step
is a log line with its duration, a failed start-up ends (never "not ready" forever), prepared exports are
used instead of exporting at start, and the thread count follows the container's CPU limit."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import threading
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from service.errors import StartupError
from service.logs import LOGGER
from service.runtime.threads import choose_threads, cpu_quota
from service.startup import StartupProgress, reporting, step
from tests.service.conftest import LogRecords, encode, gradient, make_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def records():
    capture, logger = LogRecords(), logging.getLogger(LOGGER)
    level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- the progress record -------------------------------------------------------------------------------
def test_steps_nest_in_the_snapshot_and_log_their_durations(records) -> None:
    clock = FakeClock()
    progress = StartupProgress(clock=clock)
    with reporting(progress), step("load", "loading task 2 of 3 (sr-x4)", task="sr-x4"):
        clock.now += 1.5
        with step("tune", "choosing the fastest of 4 ways to run sr-x4"):
            clock.now += 2.0
            snap = progress.snapshot()
            assert snap["status"] == "loading" and snap["step"] == "tune" and snap["elapsed_s"] == 3.5
            assert snap["message"] == "loading task 2 of 3 (sr-x4) > choosing the fastest of 4 ways to run sr-x4"
            assert [s["elapsed_s"] for s in snap["steps"]] == [3.5, 2.0]
            assert snap["steps"][0]["task"] == "sr-x4"
            clock.now += 0.25
    done = records.events("start-up step done")
    assert [(d["step"], d["seconds"]) for d in done] == [("tune", 2.25), ("load", 3.75)]
    assert progress.snapshot() == {"status": "loading", "elapsed_s": 3.8, "steps_done": 2}
    assert [e["step"] for e in records.events("start-up step")] == ["load", "tune"]  # each step announced


def test_a_failing_step_logs_why_and_how_long(records) -> None:
    clock = FakeClock()
    progress = StartupProgress(clock=clock)
    with pytest.raises(ValueError), reporting(progress), step("load", "loading task 1 of 1 (deblur)"):
        clock.now += 4.0
        raise ValueError("truncated file\nsecond line")
    (failed,) = records.events("start-up step failed")
    assert failed["seconds"] == 4.0 and failed["error"] == "truncated file"
    progress.fail("task 'deblur': truncated file")
    assert progress.snapshot()["status"] == "failed" and progress.snapshot()["error"].endswith("truncated file")
    (line,) = [r for r in records.records if r.getMessage() == "start-up failed"]
    assert line.levelno == logging.ERROR


def test_steps_outside_a_start_up_report_nothing(records) -> None:
    with step("load", "nothing is listening"):
        pass
    assert records.records == []


def test_a_long_quiet_step_still_logs_a_heartbeat(records) -> None:
    progress = StartupProgress(heartbeat_s=0.05)
    progress.start_heartbeat()
    try:
        with reporting(progress), step("export", "exporting deblur.safetensors to onnx"):
            deadline = 200
            while not records.events("starting") and deadline:
                threading.Event().wait(0.01)
                deadline -= 1
    finally:
        progress.stop_heartbeat()
    beat = records.events("starting")[0]
    assert beat["status"] == "loading" and beat["step"] == "export"
    assert beat["detail"] == "exporting deblur.safetensors to onnx"


# --- the app while it starts ----------------------------------------------------------------------------
@pytest.mark.anyio
async def test_port_answers_while_models_load_and_readyz_says_what_is_happening(checkpoints, monkeypatch) -> None:
    """The models load behind a gate: /healthz 200 and /readyz 503 `loading` with the step, restore 503
    `not_ready` with Retry-After; released, the tasks warm and /readyz turns 200 (`ready`)."""
    import service.state as state_module
    from service.http.app import create_app

    gate, real_load = threading.Event(), state_module.load_backends

    def gated_load(settings):
        with step("load", "loading task 1 of 1 (deblur)", task="deblur"):
            assert gate.wait(30)
        return real_load(settings)

    monkeypatch.setattr(state_module, "load_backends", gated_load)
    settings = make_settings({"deblur": checkpoints["deblur"]}, backend="torch")
    app = create_app(settings)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        client = await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://t"))
        for _ in range(500):  # the loading thread enters its first step
            body = (await client.get("/readyz")).json()
            if body.get("step") == "load":
                break
            await asyncio.sleep(0.01)
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
        assert ready.json()["status"] == "loading" and ready.json()["message"] == "loading task 1 of 1 (deblur)"
        assert (await client.get("/healthz")).status_code == 200
        refused = await client.post(
            "/restore/deblur", content=encode(gradient(16, 16)), headers={"content-type": "image/png"}
        )
        assert refused.status_code == 503 and refused.json()["code"] == "not_ready"
        assert refused.headers["retry-after"] == "1" and "loading task 1 of 1" in refused.json()["message"]
        assert (await client.get("/tasks")).json() == {"tasks": [], "ready": False}
        gate.set()
        statuses = []
        for _ in range(3000):
            r = await client.get("/readyz")
            statuses.append(r.json()["status"])
            if r.status_code == 200:
                break
            await asyncio.sleep(0.01)
        assert statuses[-1] == "ready" and set(statuses) <= {"loading", "warming", "ready"}
        ok = await client.post(
            "/restore/deblur", content=encode(gradient(16, 16)), headers={"content-type": "image/png"}
        )
        assert ok.status_code == 200


@pytest.mark.anyio
async def test_a_failed_start_up_is_reported_and_turns_liveness_503(checkpoints, monkeypatch, records) -> None:
    import service.state as state_module
    from service.http.app import create_app

    def broken(settings):
        with step("load", "loading task 1 of 1 (deblur)"):
            raise StartupError("task 'deblur': the checkpoint is truncated")

    monkeypatch.setattr(state_module, "load_backends", broken)
    failures: list[str] = []
    app = create_app(make_settings({"deblur": checkpoints["deblur"]}), on_startup_failure=failures.append)
    logging.getLogger(LOGGER).addHandler(records)  # create_app set up the JSON handler in place of ours
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        client = await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://t"))
        for _ in range(500):
            if failures:
                break
            await asyncio.sleep(0.01)
        assert failures == ["task 'deblur': the checkpoint is truncated"]
        health = await client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert (await client.get("/readyz")).json()["status"] == "failed"
    (line,) = records.events("start-up failed")
    assert line["error"] == "task 'deblur': the checkpoint is truncated"


# --- the real process -----------------------------------------------------------------------------------
def _env(checkpoints, **extra: str) -> dict[str, str]:
    from tests.service.test_server import env_for

    return env_for(checkpoints, **extra)


def test_a_taken_port_is_one_line_naming_it_and_no_listening_line(checkpoints) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
        done = subprocess.run(cmd, env=_env(checkpoints), cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], lines


def test_a_model_that_fails_to_load_ends_the_process_with_a_clear_line(checkpoints, tmp_path: Path) -> None:
    """The file exists (the pre-bind check passes) but is truncated: the port opens, loading fails, the
    process logs "start-up failed" naming the task and exits 1 rather than staying "not ready"."""
    bad = tmp_path / "deblur.safetensors"
    bad.write_bytes(checkpoints["deblur"].read_bytes()[:1000])
    (tmp_path / "deblur.json").write_bytes(checkpoints["deblur"].with_suffix(".json").read_bytes())
    env = _env({"deblur": bad})
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "0"]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    entries = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr
    messages = [e["msg"] for e in entries]
    assert messages.index("listening") < messages.index("start-up failed"), messages
    (failed,) = [e for e in entries if e["msg"] == "start-up failed"]
    assert failed["level"] == "error" and failed["error"].startswith("task 'deblur':"), failed


# --- exports built ahead of time ------------------------------------------------------------------------
def test_prepared_exports_are_used_and_nothing_is_exported_at_start(
    checkpoints, tmp_path: Path, records, monkeypatch, capsys
) -> None:
    """`python -m service prepare` builds the export once; a start with DIFFIR_PREPARED_DIR loads it and exports
    nothing (exporting is made to fail here, so a start that tried would not start); without the folder the
    same start would export."""
    import service.runtime.exports as exports
    from service.__main__ import main as service_main
    from service.runtime.torchscript_backend import TorchScriptBackend
    from service.state import load_backends

    prepared, cache = tmp_path / "prepared", tmp_path / "cache"
    for key, value in _env({"deblur": checkpoints["deblur"]}, DIFFIR_BACKEND="torchscript").items():
        if key.startswith("DIFFIR_"):
            monkeypatch.setenv(key, value)
    assert service_main(["prepare", "--out", str(prepared)]) == 0  # `python -m service prepare`, in this process
    (written,) = capsys.readouterr().out.split()
    assert Path(written).is_file() and Path(written).is_relative_to(prepared)

    def no_export(*args, **kwargs):
        raise RuntimeError("a start tried to export")

    monkeypatch.setattr(exports, "_export_here", no_export)
    with_prepared = make_settings(
        {"deblur": checkpoints["deblur"]}, backend="torchscript", prepared_dir=prepared, cache_dir=cache
    )
    with reporting(StartupProgress()):
        backends = load_backends(with_prepared)
    assert isinstance(backends["deblur"], TorchScriptBackend)
    assert Path(backends["deblur"].info.source).is_relative_to(prepared)
    assert [e["step"] for e in records.events("start-up step")] == ["load"]  # no "export" step
    assert not (cache / "exports").exists()
    without = make_settings({"deblur": checkpoints["deblur"]}, backend="torchscript", cache_dir=cache)
    with pytest.raises(StartupError, match="a start tried to export"), reporting(StartupProgress()):
        load_backends(without)
    assert "export" in [e["step"] for e in records.events("start-up step failed")]


def test_prepare_plans_what_auto_would_time(checkpoints) -> None:
    from service.prepare import planned_exports
    from service.runtime.devices import resolve_device

    cpu = resolve_device("cpu")
    auto = make_settings(checkpoints, backend="auto", precision=None)
    planned = {(task, fmt) for task, _, _, fmt in planned_exports(auto, cpu)}
    assert {("deblur", "torchscript"), ("deblur", "onnx"), ("sr-x4", "torchscript")} <= planned
    eager = make_settings(checkpoints, backend="torch")
    assert planned_exports(eager, cpu) == []  # nothing to export for eager PyTorch


# --- threads from the CPU limit ----------------------------------------------------------------------------
def _cgroup(tmp_path: Path, files: dict[str, str], own: str = "0::/") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(own + "\n")
    return root, proc


@pytest.mark.parametrize(
    ("files", "own", "threads", "source"),
    [
        ({"cpu.max": "200000 100000\n"}, "0::/", 2, "cgroup v2 cpu.max"),  # a 2-CPU pod on a 64-core node
        ({"cpu.max": "150000 100000\n"}, "0::/", 2, "cgroup v2 cpu.max"),  # 1.5 CPUs round up
        ({"cpu.max": "50000 100000\n"}, "0::/", 1, "cgroup v2 cpu.max"),  # half a CPU: one thread
        ({"cpu.max": "max 100000\n"}, "0::/", None, "default"),  # no limit: the library default
        # nested (no cgroup namespace): the smallest limit on the way up counts
        (
            {"cpu.max": "max 100000", "kubepods/cpu.max": "800000 100000", "kubepods/pod1/cpu.max": "300000 100000"},
            "0::/kubepods/pod1",
            3,
            "cgroup v2 cpu.max",
        ),
        (
            {"cpu/cpu.cfs_quota_us": "400000", "cpu/cpu.cfs_period_us": "100000"},
            "4:cpu,cpuacct:/",
            4,
            "cgroup v1 cfs quota",
        ),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, "4:cpu,cpuacct:/", None, "default"),
        ({"cpu.max": "6400000 100000\n"}, "0::/", None, "default"),  # a limit above the cores changes nothing
    ],
)
def test_threads_follow_the_cgroup_cpu_limit(tmp_path: Path, files, own, threads, source) -> None:
    root, proc = _cgroup(tmp_path, files, own)
    choice = choose_threads(None, root, proc, cpus=64)
    assert (choice.threads, choice.source) == (threads, source)


def test_configured_threads_win_and_no_cgroup_means_no_limit(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, {"cpu.max": "200000 100000"})
    assert choose_threads(6, root, proc, cpus=64).threads == 6
    assert cpu_quota(tmp_path / "absent", tmp_path / "absent-proc") == (None, "")


def test_the_service_applies_the_cgroup_limit(monkeypatch, tmp_path: Path) -> None:
    import torch

    import service.runtime.threads as threads_module
    from service.settings import Settings
    from service.state import apply_thread_limit

    root, proc = _cgroup(tmp_path, {"cpu.max": "100000 100000"})
    monkeypatch.setattr(threads_module, "CGROUP_ROOT", root)
    monkeypatch.setattr(threads_module, "PROC_CGROUP", proc)
    monkeypatch.setattr(threads_module, "usable_cpus", lambda: 64)
    before = torch.get_num_threads()
    try:
        assert apply_thread_limit(Settings(torch_threads=None)) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
