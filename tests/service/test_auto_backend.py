"""`DIFFIR_BACKEND=auto`, CPU precision, first-use exports and the CUDA settings (checked on the CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from service.runtime.autotune import Candidate, ChoiceCache, choose, psnr_db, tune
from service.runtime.torch_backend import TorchBackend
from service.settings import Settings, TaskSettings
from tests.service.conftest import make_settings, start_app

CPU = torch.device("cpu")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeBackend:
    """Returns `reference + offset` and "takes" `seconds` on the fake clock."""

    name = "fake"

    def __init__(self, clock: FakeClock, seconds: float, offset: float) -> None:
        self.clock, self.seconds, self.offset = clock, seconds, offset

    def run(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self.clock.now += self.seconds
        return (lq * 0.8 + 0.1 + self.offset).clamp(0, 1)


def fake_candidates(clock: FakeClock, built: list[str]) -> list[Candidate]:
    def make(label: str, seconds: float, offset: float) -> Candidate:
        def build() -> FakeBackend:
            built.append(label)
            return FakeBackend(clock, seconds, offset)

        return Candidate(label, "fake", "fp32" if label == "reference" else "bf16", build)

    return [
        make("reference", 3.0, 0.0),
        make("fast-and-close", 1.0, 0.002),  # 54 dB from the reference
        make("fastest-but-wrong", 0.5, 0.02),  # 34 dB: must be rejected
        make("slow-and-close", 2.0, 0.001),
    ]


def sample() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.zeros(1, 256)


def test_auto_picks_the_fastest_accepted_candidate_and_reuses_the_cached_choice(tmp_path: Path) -> None:
    clock, built = FakeClock(), []
    backend, tuning = tune(fake_candidates(clock, built), sample(), reps=2, clock=clock)
    trials = {t.label: t for t in tuning.trials}
    assert tuning.chosen == "fast-and-close" and backend.seconds == 1.0
    assert trials["fastest-but-wrong"].seconds == 0.5 and not trials["fastest-but-wrong"].accepted
    assert 33 < trials["fastest-but-wrong"].psnr_db < 35 and "rejected" in trials["fastest-but-wrong"].note
    assert 53 < trials["fast-and-close"].psnr_db < 55 and trials["reference"].psnr_db == math.inf

    cache = ChoiceCache(tmp_path, "machine-and-model")
    built.clear()
    first = choose(fake_candidates(clock, built), sample, cache, clock=clock)
    assert first.tuning["chosen"] == "fast-and-close" and not first.tuning["cached"]
    assert first.precision == "bf16" and len(built) == 4 and cache.path.is_file()
    built.clear()
    no_tuning = lambda: pytest.fail("a cached choice must not tune")  # noqa: E731
    again = choose(fake_candidates(clock, built), no_tuning, cache, clock=clock)
    assert built == ["fast-and-close"], "only the cached choice is built"
    assert again.tuning["cached"] and again.tuning["chosen"] == "fast-and-close"
    assert {t["label"]: t["seconds"] for t in again.tuning["trials"]}["reference"] == 3.0
    other = ChoiceCache(tmp_path, "another-machine")
    assert other.load() is None


def test_a_candidate_that_cannot_run_is_recorded_not_fatal() -> None:
    clock, built = FakeClock(), []
    candidates = fake_candidates(clock, built)

    def broken() -> FakeBackend:
        raise RuntimeError("no such provider\nsecond line")

    candidates[1] = Candidate("broken", "fake", "fp32", broken)
    _, tuning = tune(candidates, sample(), clock=clock)
    assert tuning.chosen == "slow-and-close"
    assert {t.label: t.note for t in tuning.trials}["broken"] == "unavailable: no such provider"


def test_psnr_counts_nan_as_the_worst() -> None:
    ref = torch.full((1, 3, 4, 4), 0.5)
    assert psnr_db(ref.clone(), ref) == math.inf
    bad = ref.clone()
    bad[0, 0, 0, 0] = float("nan")
    assert psnr_db(bad, ref) == -math.inf
    assert psnr_db(ref + 0.01, ref) == pytest.approx(40.0)


def test_cpu_bf16_precision_runs_in_bf16(checkpoints) -> None:
    """DIFFIR_PRECISION=bf16 on the CPU: autocast, so the output differs from fp32, but only slightly."""
    fp32 = TorchBackend(checkpoints["deblur"], None, CPU)
    bf16 = TorchBackend(checkpoints["deblur"], None, CPU, "bf16")
    lq, noise = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)), torch.randn(1, 256)
    a, b = fp32.run(lq, noise), bf16.run(lq, noise)
    assert b.dtype == torch.float32 and bf16.provider == "cpu bf16"
    assert 0 < (a - b).abs().max() < 0.05
    assert torch.allclose(bf16.restore(lq, bf16.prior(lq, noise)), b, atol=1e-6)


@pytest.mark.anyio
async def test_auto_with_an_explicit_precision_serves_it_and_reports_every_candidate(checkpoints, tmp_path) -> None:
    """`auto` + DIFFIR_PRECISION=bf16: fp32 is timed as the reference only; /tasks and the metrics say so."""
    tasks = {"deblur": checkpoints["deblur"]}
    sizes = {"autotune_size": 16, "warmup_size": 8}
    settings = make_settings(tasks, backend="auto", precision="bf16", cache_dir=tmp_path, **sizes)
    async for live in start_app(settings):
        (task,) = (await live.client.get("/tasks")).json()["tasks"]
        metrics = (await live.client.get("/metrics")).text
    assert (task["backend"], task["precision"], task["provider"]) == ("torch", "bf16", "cpu bf16")
    trials = {t["label"]: t for t in task["autotune"]["trials"]}
    assert task["autotune"]["chosen"] == "torch-bf16" and set(trials) == {"torch-fp32", "torch-bf16"}
    assert not trials["torch-fp32"]["accepted"] and trials["torch-bf16"]["psnr_db"] >= 45
    assert all(t["seconds"] > 0 for t in trials.values())
    series = 'diffir_backend_candidate_seconds{accepted="true",candidate="torch-bf16",chosen="1",task="deblur"}'
    assert series in metrics
    assert list((tmp_path / "autotune").glob("*.json")), "the choice is cached"


def test_onnxruntime_from_a_bare_checkpoint_exports_on_first_use(checkpoints, tmp_path) -> None:
    """DIFFIR_BACKEND=onnxruntime with only a checkpoint: exports built once, parity-checked, reused."""
    from service.runtime.exports import cached_export
    from service.runtime.loader import load_backend

    with pytest.raises(RuntimeError, match="took over"):  # what `auto` does with an export too slow to wait for
        cached_export(checkpoints["deblur"], None, "onnx", tmp_path, timeout_s=0.05)
    assert not list((tmp_path / "exports").glob("*/*.onnx")), "a killed export leaves nothing to reuse"
    built = cached_export(checkpoints["deblur"], None, "onnx", tmp_path, timeout_s=900)  # in a child process
    settings = Settings(backend="onnxruntime", cache_dir=tmp_path)
    spec = TaskSettings(checkpoint=checkpoints["deblur"])
    onnx = load_backend("deblur", spec, settings, CPU)
    assert Path(onnx.info.source) == built
    assert onnx.name == "onnxruntime" and onnx.supports_tiling
    (folder,) = (p for p in (tmp_path / "exports").iterdir() if not p.name.startswith("."))
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert set(stamps) == {f"deblur.{g}.onnx{s}" for g in ("prior", "restorer") for s in ("", ".json")}
    eager = TorchBackend(checkpoints["deblur"], None, CPU)
    lq, noise = torch.rand(2, 3, 24, 40), torch.randn(2, 256)
    assert torch.allclose(onnx.run(lq, noise), eager.run(lq, noise), atol=1e-4)
    load_backend("deblur", spec, settings, CPU)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps, "the second start reuses the export"


def test_an_unwritable_cache_dir_is_a_clear_startup_error(checkpoints, tmp_path) -> None:
    from service.errors import StartupError
    from service.runtime.loader import load_backend

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StartupError, match="DIFFIR_CACHE_DIR"):
        load_backend("deblur", TaskSettings(checkpoint=checkpoints["deblur"]),
                     Settings(backend="onnxruntime", cache_dir=blocker / "cache"), CPU)  # fmt: skip


# --- CUDA settings, checked without a GPU ------------------------------------------------------------
def test_fp32_on_cuda_enables_tf32_and_cpu_precision_uses_autocast() -> None:
    from service.runtime import devices

    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "ieee"
        devices.math_mode(torch.device("cuda"), "fp16")
        assert not devices.tf32_enabled(), "half precision casts weights; TF32 is for fp32 only"
        devices.math_mode(torch.device("cuda"), "fp32")
        assert devices.tf32_enabled()
    finally:
        matmul.fp32_precision = before
    with devices.math_mode(CPU, "bf16")():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with devices.math_mode(CPU, "fp32")():
        assert not torch.is_autocast_enabled("cpu")


def test_ort_on_cuda_uses_heuristic_search_and_a_bounded_arena() -> None:
    from service.runtime.onnx_backend import providers_for

    (cuda, options), cpu = providers_for(torch.device("cuda:1"), ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert cuda == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"
    assert options["device_id"] == 1 and options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["arena_extend_strategy"] == "kSameAsRequested" and 0 < options["gpu_mem_limit"] < 1 << 40
    assert providers_for(CPU, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_cuda_device_without_the_cuda_provider_refuses_to_start(checkpoints, tmp_path, monkeypatch) -> None:
    """No CUDA provider, or one that silently falls back to the CPU: a start-up error, never a slow service."""
    import onnxruntime as ort

    from service.runtime.artifacts import find_graphs
    from service.runtime.onnx_backend import OnnxBackend
    from tests.service.conftest import tiny_model
    from tests.service.exporting import export

    paths = export(tiny_model("deblur"), checkpoints["deblur"], tmp_path, "deblur", "onnx", graphs=("full",))
    graphs = find_graphs(paths["full"])
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        OnnxBackend(graphs, torch.device("cuda"))
    asked = []

    class FallingBack:  # what ORT does when the CUDA provider's libraries do not load
        def __init__(self, path, sess_options=None, providers=()):
            asked.append(providers)

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FallingBack)
    with pytest.raises(RuntimeError, match="could not load its CUDA provider"):
        OnnxBackend(graphs, torch.device("cuda"))
    assert asked[0][0][0] == "CUDAExecutionProvider"


def test_the_windowed_prior_is_exact(checkpoints) -> None:
    """The torch backend's bounded-memory prior (model's `prior_windowed`) equals the whole-image prior."""
    from models import load_model

    net = load_model(checkpoints["deblur"])
    lq, noise = torch.rand(1, 3, 72, 88, generator=torch.Generator().manual_seed(5)), torch.randn(1, 256)
    with torch.no_grad():
        whole, windowed = net.prior(lq, noise), net.prior_windowed(lq, noise, window=8)
    assert torch.allclose(windowed, whole, atol=1e-5)


def test_cuda_onnx_backends_get_coarser_shape_buckets(checkpoints) -> None:
    """Fewer distinct shapes reach cuDNN: the backend's bucket multiple applies unless the setting is given."""
    from service.scheduling.engine import Engine, EngineLimits, Job

    backend = TorchBackend(checkpoints["deblur"], None, CPU)
    job = Job(torch.rand(1, 3, 40, 24), None, seed=0)
    assert Engine("d", backend, EngineLimits(512, 32, 10**7, 0)).bucket(job) == (40, 24)
    backend.bucket_multiple = 64  # what OnnxBackend sets on CUDA
    assert Engine("d", backend, EngineLimits(512, 32, 10**7, 0)).bucket(job) == (64, 64)
    assert Engine("d", backend, EngineLimits(512, 32, 10**7, 16)).bucket(job) == (48, 32), "an explicit setting wins"


def test_auto_leaves_out_the_onnx_export_of_a_smooth_fill_model(tmp_path: Path) -> None:
    """The smooth pre-fill's unrolled graph takes minutes to export: `auto` does not make every first start
    wait for it, while models without the pre-fill keep ONNX Runtime as a candidate."""
    import dataclasses

    from models import save_checkpoint
    from models.diffir import DiffIRS2
    from service.runtime.loader import auto_candidates
    from tests.service.conftest import TINY_CONFIGS as TINY

    settings = Settings(cache_dir=tmp_path / "cache")
    labels = {}
    for name, config in (
        ("plain", TINY["inpaint"]),
        ("smooth", dataclasses.replace(TINY["inpaint"], name="tiny-inpaint-fill", hole_fill="smooth")),
    ):
        ckpt = save_checkpoint(DiffIRS2(config).eval(), tmp_path / f"{name}.safetensors")
        found = auto_candidates(ckpt, TaskSettings(), settings, torch.device("cpu"))
        labels[name] = [c.label for c in found]
    assert {"torch-fp32", "torchscript-fp32", "onnxruntime-fp32"} <= set(labels["plain"]), labels
    assert labels["smooth"] == [label for label in labels["plain"] if label != "onnxruntime-fp32"], labels
