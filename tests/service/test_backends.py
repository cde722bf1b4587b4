"""Backends behind one interface (torch, TorchScript, ONNX Runtime), and start-up faults as one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.tasks import TASKS
from service.errors import StartupError
from service.runtime.artifacts import find_graphs
from service.runtime.devices import resolve_device
from service.runtime.loader import load_backend
from service.runtime.onnx_backend import OnnxBackend
from service.runtime.torch_backend import TorchBackend
from service.runtime.torchscript_backend import TorchScriptBackend
from service.settings import Settings, TaskSettings, describe_validation_error
from service.state import load_backends
from tests.service.conftest import decode, encode, gradient, make_settings, start_app, tiny_model
from tests.service.exporting import export

CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def artifacts(checkpoints, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    out = tmp_path_factory.mktemp("export")
    net = tiny_model("deblur")
    return {kind: export(net, checkpoints["deblur"], out / kind, "deblur", kind) for kind in ("onnx", "ts")}


@pytest.mark.parametrize("kind", ["onnx", "ts"])
def test_exported_backends_match_torch(checkpoints, artifacts, kind: str) -> None:
    reference = TorchBackend(checkpoints["deblur"], None, CPU)
    cls = OnnxBackend if kind == "onnx" else TorchScriptBackend
    backend = cls(find_graphs(artifacts[kind]["full"]), CPU)
    same = ("variant", "kind", "scale", "size_multiple", "pad_mode", "in_channels", "ipr_dim")
    assert backend.supports_tiling
    assert all(getattr(backend.info, f) == getattr(reference.info, f) for f in same)
    lq, noise = torch.rand(2, 3, 40, 24), torch.randn(2, 256)  # batch 2, a size other than the export's
    expected = reference.run(lq, noise)
    assert torch.allclose(backend.run(lq, noise), expected, atol=1e-4)
    assert torch.allclose(backend.restore(lq, backend.prior(lq, noise)), expected, atol=1e-4)


class _Session:
    """An ONNX Runtime session that reports `providers` from `get_providers()` and otherwise is the real one."""

    def __init__(self, real, providers: list[str]) -> None:
        self._real, self._providers = real, providers

    def get_providers(self) -> list[str]:
        return self._providers

    def __getattr__(self, name: str):
        return getattr(self._real, name)


def fake_onnxruntime(monkeypatch: pytest.MonkeyPatch, available: list[str], reports: list[str]) -> list:
    """onnxruntime as installed on a machine with `available` providers whose sessions end up on
    `reports` (a CUDA provider that fails to load leaves a session on the CPU). Returns the provider
    lists the code under test asked for."""
    import onnxruntime as ort

    real, requested = ort.InferenceSession, []

    def session(path, sess_options=None, providers=None, **kwargs):
        requested.append(providers)
        return _Session(real(path, sess_options=sess_options, providers=["CPUExecutionProvider"]), reports)

    monkeypatch.setattr(ort, "get_available_providers", lambda: list(available))
    monkeypatch.setattr(ort, "InferenceSession", session)
    return requested


@pytest.mark.anyio
async def test_tasks_reports_the_provider_the_session_runs_on(artifacts, monkeypatch: pytest.MonkeyPatch) -> None:
    """`/tasks` and `diffir_model_info` carry what the session says it runs on, not what was asked for."""
    cpu = ["CPUExecutionProvider"]
    requested = fake_onnxruntime(monkeypatch, ["DnnlExecutionProvider", *cpu], ["DnnlExecutionProvider", *cpu])
    settings = make_settings({}, tasks={"deblur": {"artifact": str(artifacts["onnx"]["full"])}})
    async for live in start_app(settings):
        (task,) = (await live.client.get("/tasks")).json()["tasks"]
        metrics = (await live.client.get("/metrics")).text
    assert requested and all(p == cpu for p in requested)  # the service asked for the CPU provider only
    assert task["provider"] == "DnnlExecutionProvider"
    assert 'provider="DnnlExecutionProvider",task="deblur"' in metrics


def test_a_cuda_provider_that_falls_back_to_the_cpu_is_refused(artifacts, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA requested and listed as available, but the session comes up on the CPU only (cuDNN missing):
    the service refuses to start rather than serve 100x slower while claiming CUDA."""
    requested = fake_onnxruntime(
        monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]
    )
    spec = TaskSettings(artifact=artifacts["onnx"]["full"])
    with pytest.raises(StartupError) as err:  # the device as `DIFFIR_DEVICE=cuda` resolves it on a GPU machine
        load_backend("deblur", spec, Settings(), torch.device("cuda"))
    message = one_line(err.value)
    assert requested and requested[0][0][0] == "CUDAExecutionProvider"  # CUDA was really asked for
    assert "CUDA provider" in message and "CPU" in message, message


def test_partial_graph_sets(artifacts, tmp_path: Path) -> None:
    src = artifacts["onnx"]
    for graph in ("full",):
        for suffix in (".onnx", ".json"):
            shutil.copy(src[graph].with_suffix(suffix), tmp_path / src[graph].with_suffix(suffix).name)
    only_full = OnnxBackend(find_graphs(tmp_path / "deblur.full.onnx"), CPU)
    assert not only_full.supports_tiling
    pair = tmp_path / "pair"
    pair.mkdir()
    for graph in ("prior", "restorer"):
        for suffix in (".onnx", ".json"):
            shutil.copy(src[graph].with_suffix(suffix), pair / src[graph].with_suffix(suffix).name)
    split = OnnxBackend(find_graphs(pair / "deblur.prior.onnx"), CPU)
    lq, noise = torch.rand(1, 3, 16, 16), torch.randn(1, 256)
    assert torch.allclose(split.run(lq, noise), only_full.run(lq, noise), atol=1e-5)


@pytest.mark.anyio
async def test_service_on_onnxruntime(checkpoints, artifacts) -> None:
    settings = make_settings({}, tasks={"deblur": {"artifact": str(artifacts["onnx"]["full"])}})
    data = encode(gradient(40, 24))
    async for live in start_app(settings):
        (task,) = (await live.client.get("/tasks")).json()["tasks"]
        assert (task["backend"], task["provider"], task["tiling"]) == ("onnxruntime", "CPUExecutionProvider", True)
        onnx_out = await live.client.post("/restore/deblur?seed=5", content=data, headers={"content-type": "image/png"})
        assert onnx_out.status_code == 200
        metrics = (await live.client.get("/metrics")).text
        assert 'backend="onnxruntime",provider="CPUExecutionProvider",task="deblur"' in metrics
    async for live in start_app(make_settings({"deblur": checkpoints["deblur"]})):
        torch_out = await live.client.post(
            "/restore/deblur?seed=5", content=data, headers={"content-type": "image/png"}
        )
    diff = np.abs(np.asarray(decode(onnx_out.content)).astype(int) - np.asarray(decode(torch_out.content)))
    assert diff.max() <= 1


def test_backend_setting_picks_exported_siblings(checkpoints, artifacts, tmp_path: Path) -> None:
    """DIFFIR_BACKEND=onnxruntime with a checkpoint path uses `<stem>.full.onnx` next to it."""
    for path in artifacts["onnx"].values():
        for suffix in (".onnx", ".json"):
            shutil.copy(path.with_suffix(suffix), tmp_path / path.with_suffix(suffix).name)
    shutil.copy(checkpoints["deblur"], tmp_path / "deblur.safetensors")
    settings = Settings(backend="onnxruntime")
    backend = load_backend("deblur", TaskSettings(checkpoint=tmp_path / "deblur.safetensors"), settings, CPU)
    assert backend.name == "onnxruntime"


# --- start-up faults: one clear line ------------------------------------------------------------
def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


def startup_error(tasks: dict, **settings: object) -> str:
    with pytest.raises(StartupError) as err:
        load_backends(Settings(tasks=tasks, **settings))  # type: ignore[arg-type]
    return one_line(err.value)


def test_missing_truncated_and_mismatched_files(checkpoints, artifacts, tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    assert "checkpoint not found" in startup_error({"deblur": {"checkpoint": str(missing)}})
    truncated = tmp_path / "deblur.safetensors"
    truncated.write_bytes(checkpoints["deblur"].read_bytes()[:1000])
    shutil.copy(checkpoints["deblur"].with_suffix(".json"), truncated.with_suffix(".json"))
    assert "does not match" in startup_error({"deblur": {"checkpoint": str(truncated)}})
    no_sidecar = tmp_path / "lonely.safetensors"
    shutil.copy(checkpoints["deblur"], no_sidecar)
    assert "sidecar" in startup_error({"deblur": {"checkpoint": str(no_sidecar)}})
    onnx = tmp_path / "deblur.full.onnx"
    shutil.copy(artifacts["onnx"]["full"], onnx)
    meta = json.loads(artifacts["onnx"]["full"].with_suffix(".json").read_text())
    onnx.with_suffix(".json").write_text(json.dumps({**meta, "sha256": "0" * 64}))
    assert "does not match" in startup_error({"deblur": {"artifact": str(onnx)}})
    shutil.copy(artifacts["ts"]["full"].with_suffix(".json"), onnx.with_suffix(".json"))  # a shared sidecar
    assert "describes deblur.full.ts" in startup_error({"deblur": {"artifact": str(onnx)}})


def test_wrong_model_for_a_builtin_task(checkpoints) -> None:
    message = startup_error({"sr-x4": {"checkpoint": str(checkpoints["deblur"])}})
    assert "needs a sr x4 model" in message and "tiny-deblur" in message


def test_custom_task_names_take_any_model(checkpoints) -> None:
    backends = load_backends(Settings(tasks={"my-deblur": {"checkpoint": str(checkpoints["deblur"])}}))
    assert backends["my-deblur"].info.variant == "tiny-deblur"


def test_missing_shipped_defaults_are_a_clear_error(tmp_path, monkeypatch) -> None:
    """A checkout without the default weights says which file is missing (the shipped ones are
    covered end to end by the shipped-defaults test)."""
    import models.tasks

    monkeypatch.setattr(models.tasks, "WEIGHTS_DIR", tmp_path / "weights")
    assert all(not TASKS[name].default_checkpoint_path().is_file() for name in TASKS)
    message = startup_error({})
    assert str(tmp_path / "weights" / "deblur.safetensors") in message and "is missing" in message, message


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"max_batch_size": 0}, "DIFFIR_MAX_BATCH_SIZE"),
        ({"device": "tpu"}, "DIFFIR_DEVICE"),
        ({"tasks": {"deblur": {"checkpoint": "a.safetensors", "artifact": "a.full.onnx"}}}, "DIFFIR_TASKS"),
        ({"tasks": {"deblur": {"artifact": "a.full.bin"}}}, "DIFFIR_TASKS"),
        ({"tasks": {"Bad Name": {}}}, "DIFFIR_TASKS"),
        ({"tile_size": 64, "tile_overlap": 40}, "tile_overlap"),
    ],
)
def test_invalid_settings_name_the_variable(env: dict, needle: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        Settings(**env)
    assert needle in one_line(describe_validation_error(err.value))  # type: ignore[arg-type]


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, checkpoints) -> None:
    monkeypatch.setenv("DIFFIR_TASKS", json.dumps({"deblur": {"checkpoint": str(checkpoints["deblur"])}}))
    monkeypatch.setenv("DIFFIR_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("DIFFIR_API_KEY", "k")
    s = Settings()
    assert s.max_batch_size == 8 and s.api_key is not None and s.api_key.get_secret_value() == "k"
    assert s.tasks["deblur"].checkpoint == checkpoints["deblur"]
    assert resolve_device("cpu") == CPU
    monkeypatch.setenv("DIFFIR_API_KEY", "")
    assert Settings().api_key is None  # an empty key is no key, not "any key"


def test_every_setting_is_documented() -> None:
    import service.settings as module

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Service settings", 1)[1].split("\n## ", 1)[0]
    for name in Settings.model_fields:
        variable = f"`DIFFIR_{name.upper()}`"
        assert variable in section, variable
        assert variable in (module.__doc__ or ""), variable


def test_exported_backend_tiles_with_a_bounded_prior(checkpoints, artifacts) -> None:
    from service.scheduling.engine import Engine, EngineLimits, Job

    onnx = OnnxBackend(find_graphs(artifacts["onnx"]["full"]), CPU)
    eager = TorchBackend(checkpoints["deblur"], None, CPU)
    job = Job(torch.rand(1, 3, 96, 120, generator=torch.Generator().manual_seed(0)), None, seed=1)
    exact = Engine("d", eager, EngineLimits(48, 8, 1000, 0)).run_batch([job])[0]
    same = Engine("d", onnx, EngineLimits(48, 8, 1000, 0, prior_max_pixels=10**8)).run_batch([job])[0]
    assert torch.allclose(same, exact, atol=1e-4)
    approx = Engine("d", onnx, EngineLimits(48, 8, 1000, 0, prior_max_pixels=64 * 64)).run_batch([job])[0]
    assert approx.shape == exact.shape and float((approx - exact).abs().mean()) < 0.05


def test_default_batch_size_follows_the_device(checkpoints) -> None:
    from service.state import batch_size_for

    backend = TorchBackend(checkpoints["deblur"], None, CPU)
    assert batch_size_for(Settings(), backend) == 1  # batching is slower per image on the CPU
    backend.provider = "cuda:0 (NVIDIA H100)"
    assert batch_size_for(Settings(), backend) == 8
    assert batch_size_for(Settings(max_batch_size=3), backend) == 3


def test_typos_in_setting_names_are_pointed_out() -> None:
    from service.settings import unknown_variables

    notes = unknown_variables({"DIFFIR_MAX_BATCHSIZE": "4", "DIFFIR_PORT": "1", "DIFFIR_TEST_MODELS": "/x"})
    assert notes == ["DIFFIR_MAX_BATCHSIZE (did you mean DIFFIR_MAX_BATCH_SIZE?)", "DIFFIR_TEST_MODELS"]
