"""The first-GPU check: every CUDA path of the project, step by step, results written after each step.

Run it through `bench/gpu_check.sh` (which documents the machine it is made for). Steps:

1. `environment`   torch/CUDA/ONNX Runtime versions; the carried wheels the machine needs are unpacked
                   (`bench.gpu_wheels.provide`, before any step), every requirement of the closure is checked
                   against what is installed, and everything later steps import (`IMPORTS`) is imported in
                   a subprocess with the service's environment: a missing or incompatible package fails here
2. `eager_parity`  shipped deblur, sr-x4 and inpaint on the device in fp32 (TF32 off), TF32, fp16 and
                   bf16 against fp32 on the CPU, at a size where attention matters (512²)
3. `torchscript`   graphs exported on the CPU (`models.graphs.write_graph`), loaded onto the device
4. `eager_speed`   images/s at batch 1-32 for the official `deblur` preset and the shipped model,
                   eager fp16/bf16 and replayed CUDA graphs (one captured graph per batch bucket)
5. `onnxruntime`   the provider a session really uses (CUDA needs onnxruntime-gpu; TensorRT if present)
6. `pytest_gpu`    the suite's `gpu`-marked tests
7. `http`          `python -m service` on the device: providers in /tasks, deblur and inpaint answers
                   decoded and compared with the CPU result (not just a 200)
8. `throughput`    images/s through HTTP at concurrency 1-64 (batches up to 32 form in the service)

`DIFFIR_GPU_CHECK_CPU=1` runs the same steps on the CPU at tiny sizes (to test the check itself).
Each step is `pass`, `fail` or `unavailable` (what this machine cannot do, e.g. no onnxruntime-gpu);
the exit status is 1 when any step failed. `DIFFIR_GPU_CHECK_STEPS=a,b` runs only those steps;
`DIFFIR_GPU_CHECK_BREAK=<step>` makes that step raise (to test that a failure is reported).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import io
import json
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import gpu_wheels
from models import DiffIRS2, get_preset, load_model, noise_for_seed, save_checkpoint
from models.graphs import write_graph
from models.inpainting import composite, network_input
from models.tasks import get_task
from models.tf32 import tf32

LOG = logging.getLogger("gpu_check")
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("deblur", "sr-x4", "inpaint")
OFFICIAL_TASK = "deblur-official"
THROUGHPUT_TARGET = 500.0  # images/s, official deblur preset at 256² through the service (H100/H200 class)
IMPORTS = (
    "service.__main__",
    "service.http.app",
    "service.http.server",
    "uvicorn.protocols.http.httptools_impl",
    "fastapi_offline",
    "multipart",
    "png",
    "tifffile",
    "PIL.Image",
    "httpx",
    "pytest",
    "pytest_timeout",
    "onnxruntime",
    "onnx",
    "training.run",
    "training.gpu_recipe",
    "training.stage2",
    "cv2",
)
"""What the later steps and the training recipe import, checked by `environment` in a fresh interpreter with
the environment the service and pytest get (a module that imports here but not there fails those steps)."""
# |device - CPU fp32| on images in [0, 1]; measured on the CPU: fp16 ~1e-3, bf16 ~7e-3
ABS_TOL = {"fp32": 2e-3, "tf32": 2e-2, "fp16": 2e-2, "bf16": 6e-2}
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HTTP_MIN_PSNR = 40.0


@dataclass(frozen=True)
class Plan:
    """Sizes and counts: the GPU plan fits 8 minutes on an H200; the CPU plan is a smoke run."""

    cpu: bool
    parity_size: int
    speed_size: int
    batches: tuple[int, ...]
    concurrency: tuple[int, ...]
    requests_per_client: int
    max_batch: int
    warmup_size: int
    budget_s: float
    precisions: tuple[str, ...]
    official_preset: str
    """The model of the throughput target; the CPU plan uses a small stand-in with the same code paths."""
    torchscript_tasks: tuple[str, ...]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu" if self.cpu else "cuda")

    @classmethod
    def for_machine(cls, cpu: bool) -> Plan:
        if cpu:
            return cls(True, 32, 32, (1, 2), (1, 4), 2, 4, 32, 600.0, ("fp32", "bf16"), "deblur-small", ("deblur",))
        return cls(
            False,
            512,
            256,
            (1, 2, 4, 8, 16, 32),
            (1, 8, 32, 64),
            16,
            32,
            64,
            450.0,
            tuple(DTYPES),
            "deblur",
            ("deblur", "sr-x4"),
        )


class Unavailable(Exception):
    """This machine cannot do what the step checks (reported, not a failure)."""


@dataclass
class Context:
    plan: Plan
    out: Path
    tmp: Path
    started: float = field(default_factory=time.perf_counter)
    nets: dict[str, DiffIRS2] = field(default_factory=dict)
    cpu_refs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    server: subprocess.Popen | None = None
    url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    packages: dict[str, Any] = field(default_factory=dict)
    """`bench.gpu_wheels.provide`'s report: what was unpacked from the carried wheels, versions, problems."""

    def remaining(self) -> float:
        return self.plan.budget_s - (time.perf_counter() - self.started)

    def net(self, task: str) -> DiffIRS2:
        """The shipped network of `task` on the CPU in fp32 (never cast in place: copies are)."""
        if task not in self.nets:
            self.nets[task] = load_model(get_task(task).default_checkpoint_path()).eval()
        return self.nets[task]


# --- inputs and comparisons ----------------------------------------------------------------------
def photo_like(size: int, seed: int = 0) -> torch.Tensor:
    """A deterministic (1, 3, size, size) image in [0, 1]: smooth shading, edges and a little noise."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.stack([0.5 + 0.4 * torch.sin(9 * x + 4 * y), y, ((x * 6).floor() + (y * 6).floor()) % 2 * 0.5 + 0.25])
    return (rgb + 0.03 * torch.randn(rgb.shape, generator=gen)).clamp(0, 1).unsqueeze(0)


def hole(size: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4 : size // 2, size // 3 : 3 * size // 4] = 1
    return mask


def task_input(task: str, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(network input, image, mask) for `task` whose *output* is size x size."""
    spec = get_task(task)
    image = photo_like(size // spec.scale)
    mask = hole(size) if spec.needs_mask else None
    return network_input(image, mask), image, mask


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def compare(out: torch.Tensor, ref: torch.Tensor, tol: float) -> dict[str, Any]:
    out = out.detach().float().cpu()
    finite = bool(torch.isfinite(out).all())
    err = (out - ref).abs().max().item() if finite else math.inf
    return {
        "finite": finite,
        "max_abs_err": err,
        "psnr_db": psnr(out, ref) if finite else None,
        "tol": tol,
        "ok": finite and err <= tol,
    }


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def on_device(net: DiffIRS2, dev: torch.device, dtype: torch.dtype) -> DiffIRS2:
    """A copy of `net` on `dev` in `dtype`, made *outside* inference mode: a cast inside it makes
    every parameter an inference tensor, which nothing can trace or export afterwards."""
    return copy.deepcopy(net).to(device=dev, dtype=dtype).eval()


def cpu_reference(ctx: Context, task: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input, noise, fp32 CPU output) at the parity size, computed once."""
    if task not in ctx.cpu_refs:
        x, _, _ = task_input(task, ctx.plan.parity_size)
        noise = noise_for_seed(1)
        with torch.inference_mode():
            ctx.cpu_refs[task] = (x, noise, ctx.net(task)(x, noise=noise))
    return ctx.cpu_refs[task]


# --- steps -----------------------------------------------------------------------------------------
def step_environment(ctx: Context) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["cudnn"] = torch.backends.cudnn.version()
        info["device_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    if not ctx.plan.cpu and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible to torch")
    info["packages"] = ctx.packages
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    info["imports"] = import_check(ctx)
    problems = list(ctx.packages.get("problems", [])) + [f"import {m}: {e}" for m, e in info["imports"].items() if e]
    if problems:
        raise RuntimeError(f"the later steps cannot run: {'; '.join(problems)}")
    return info


def provide_packages(ctx: Context) -> None:
    """Unpack the carried wheels this interpreter needs (a missing or incompatible version) and put them on
    this process's path and on every subprocess's PYTHONPATH. Runs before any step, so a rerun of single
    steps has them too; `environment` reports the outcome."""
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    wheels = Path(os.environ.get("DIFFIR_WHEELS", ROOT / "wheels" / version))
    site = ctx.tmp / "site"
    ctx.packages = gpu_wheels.provide(wheels, site) | {"wheels": str(wheels)}
    ctx.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), str(ROOT), os.environ.get("PYTHONPATH")) if p)


def import_check(ctx: Context) -> dict[str, str]:
    """module -> "" when it imports in a fresh interpreter with the subprocesses' environment, else the error."""
    script = (
        "import importlib, json, sys\n"
        "errors = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "        errors[name] = ''\n"
        "    except Exception as exc:\n"
        "        errors[name] = f'{type(exc).__name__}: {exc}'[:500]\n"
        "print(json.dumps(errors))\n"
    )
    env = {**os.environ, **ctx.env}
    res = subprocess.run([sys.executable, "-c", script, *IMPORTS], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    if res.returncode != 0:
        return {"(interpreter)": f"exit {res.returncode}: {res.stderr[-1500:]}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def step_eager_parity(ctx: Context) -> dict[str, Any]:
    dev, results, failed = ctx.plan.device, {}, []
    for task in SHIPPED:
        x, noise, ref = cpu_reference(ctx, task)
        for precision in ctx.plan.precisions:
            if precision == "tf32" and dev.type != "cuda":
                continue
            net = on_device(ctx.net(task), dev, DTYPES[precision])
            with tf32(precision == "tf32"), torch.inference_mode():
                out = net(x.to(dev, DTYPES[precision]), noise=noise.to(dev, DTYPES[precision]))
            res = compare(out, ref, ABS_TOL[precision])
            results[f"{task} {precision}"] = res
            if not res["ok"]:
                failed.append(f"{task} {precision}")
            del net
    results["size"] = ctx.plan.parity_size
    if failed:
        raise RuntimeError(f"outside tolerance or not finite: {', '.join(failed)}; {json.dumps(results)}")
    return results


def step_torchscript(ctx: Context) -> dict[str, Any]:
    """The inpainting graph (hundreds of unrolled fill iterations) takes minutes to trace; deblur and
    sr-x4 exercise the same export and device move."""
    dev, results, failed = ctx.plan.device, {}, []
    for task in ctx.plan.torchscript_tasks:
        path = ctx.tmp / f"{task}.full.ts"
        seconds = write_graph(ctx.net(task), "full", "torchscript", path)
        loaded = torch.jit.load(str(path), map_location=dev)
        x, noise, ref = cpu_reference(ctx, task)
        with tf32(False), torch.inference_mode():
            out = loaded(x.to(dev), noise.to(dev))
        res = compare(out, ref, ABS_TOL["fp32"]) | {"export_s": round(seconds, 1)}
        results[task] = res
        if not res["ok"]:
            failed.append(task)
    if failed:
        raise RuntimeError(f"TorchScript on {dev.type}: {', '.join(failed)}; {json.dumps(results)}")
    return results


def official_deblur(ctx: Context) -> DiffIRS2:
    """The official `deblur` preset (random weights: speed does not depend on them)."""
    if OFFICIAL_TASK not in ctx.nets:
        torch.manual_seed(0)
        ctx.nets[OFFICIAL_TASK] = DiffIRS2(get_preset(ctx.plan.official_preset)).eval()
    return ctx.nets[OFFICIAL_TASK]


def images_per_s(fn: Callable[[], Any], batch: int, dev: torch.device, min_s: float) -> float:
    """Batch x calls / seconds over at least `min_s` (at least 3 calls on CUDA, 1 on the CPU), after one call."""
    fn()
    sync(dev)
    reps, start = 0, time.perf_counter()
    while reps < (3 if dev.type == "cuda" else 1) or time.perf_counter() - start < min_s:
        fn()
        reps += 1
        sync(dev)
    return batch * reps / (time.perf_counter() - start)


def graphed(net: DiffIRS2, lq: torch.Tensor, noise: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One CUDA graph for one fixed bucket (batch, size): replays the whole forward with one launch."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            net(lq, noise=noise)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = net(lq, noise=noise)

    def replay() -> torch.Tensor:
        graph.replay()
        return static_out

    return replay


def step_eager_speed(ctx: Context) -> dict[str, Any]:
    dev, size, plan = ctx.plan.device, ctx.plan.speed_size, ctx.plan
    precisions = ("fp16", "bf16") if dev.type == "cuda" else ("fp32",)
    table: dict[str, Any] = {"size": size, "batches": list(plan.batches), "images_per_s": {}}
    worst_graph_err, errors = 0.0, []
    for name, net in ((OFFICIAL_TASK, official_deblur(ctx)), ("deblur", ctx.net("deblur"))):
        for precision in precisions:
            dtype = DTYPES[precision]
            low = on_device(net, dev, dtype)
            eager, replayed = [], []
            for b in plan.batches:
                if ctx.remaining() < 120:
                    break
                lq = photo_like(size).repeat(b, 1, 1, 1).to(dev, dtype)
                noise = torch.randn(b, 256, generator=torch.Generator().manual_seed(b)).to(dev, dtype)
                with torch.inference_mode():
                    try:
                        run_eager = partial(low, lq, noise=noise)
                        if b == plan.batches[0] and not bool(torch.isfinite(run_eager()).all()):
                            errors.append(f"{name} {precision}: the eager output is not finite")
                        eager.append(round(images_per_s(run_eager, b, dev, 0.5 if dev.type == "cuda" else 0), 1))
                    except torch.OutOfMemoryError:
                        eager.append("oom")
                        torch.cuda.empty_cache()
                    if dev.type == "cuda":
                        try:  # a capture failure is reported, and the eager numbers are kept
                            replay = graphed(low, lq, noise)
                            err = (replay().float() - low(lq, noise=noise).float()).abs().max().item()
                            # not max(): max(0.0, nan) is 0.0, and a NaN replay would pass as exact
                            if not err <= worst_graph_err:
                                worst_graph_err = err
                            replayed.append(round(images_per_s(replay, b, dev, 0.5), 1))
                            del replay
                        except Exception as exc:
                            replayed.append("error")
                            errors.append(f"{name} {precision} batch {b}: {type(exc).__name__}: {str(exc)[:300]}")
                            torch.cuda.empty_cache()
            table["images_per_s"][f"{name} {precision} eager"] = eager
            if dev.type == "cuda":
                table["images_per_s"][f"{name} {precision} cuda graph"] = replayed
            low = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    table["cuda_graphs"] = "captured per (batch, size) bucket" if dev.type == "cuda" else "not on the CPU"
    table["cuda_graph_max_abs_err_vs_eager"] = worst_graph_err
    for key, row in table["images_per_s"].items():
        if any(isinstance(v, float) and not math.isfinite(v) for v in row):
            errors.append(f"{key}: a timing is not finite: {row}")
    if not worst_graph_err <= 1e-2:  # NaN fails too
        errors.append(f"CUDA graph replay differs from eager by {worst_graph_err}")
    if errors:
        raise RuntimeError(f"{'; '.join(errors)}: {json.dumps(table)}")
    return table


def step_onnxruntime(ctx: Context) -> dict[str, Any]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    path = ctx.tmp / "deblur.full.onnx"
    info: dict[str, Any] = {"onnxruntime": ort.__version__, "available": available}
    info["export_s"] = round(write_graph(ctx.net("deblur"), "full", "onnx", path), 1)
    x, noise, ref = cpu_reference(ctx, "deblur")
    wanted = ["CPUExecutionProvider"] if ctx.plan.cpu else ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    options = {"CUDAExecutionProvider": {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"}}
    runs = {}
    for provider in wanted:
        if provider not in available:
            runs[provider] = "not in onnxruntime.get_available_providers()"
            continue
        if provider == "TensorrtExecutionProvider" and ctx.remaining() < 300:
            runs[provider] = "skipped: building a TensorRT engine does not fit the time left"
            continue
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(
            str(path),
            opts,
            providers=[(provider, options.get(provider, {}))]
            + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else []),
        )
        in_use = session.get_providers()[0]  # a provider that failed to load is dropped from this list
        started = time.perf_counter()
        got = torch.from_numpy(session.run(None, {"lq": x.numpy(), "noise": noise.numpy()})[0])
        runs[provider] = {"in_use": in_use, "first_run_s": round(time.perf_counter() - started, 2)}
        runs[provider] |= compare(got, ref, ABS_TOL["fp32"] if provider != "TensorrtExecutionProvider" else 2e-2)
        runs[provider]["ok"] = runs[provider]["ok"] and in_use == provider
    info["runs"] = runs
    done = [p for p, r in runs.items() if isinstance(r, dict)]
    if any(not runs[p]["ok"] for p in done):
        raise RuntimeError(f"ONNX Runtime: {json.dumps(info)}")
    if not done:
        # still check what this machine can run, then report the GPU provider as unavailable
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"lq": x.numpy(), "noise": noise.numpy()})[0])
        info["cpu_provider"] = compare(got, ref, ABS_TOL["fp32"])
        if not info["cpu_provider"]["ok"]:
            raise RuntimeError(f"ONNX Runtime CPU provider parity: {json.dumps(info)}")
        raise Unavailable(
            "no CUDA provider: onnxruntime-gpu is not installed here and its wheel (~250 MB) cannot travel within "
            f"the 64 MiB the device tool carries; CPU provider parity ok; {json.dumps(info)}"
        )
    return info


def gpu_test_files() -> list[str]:
    files = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if "mark.gpu" in path.read_text(encoding="utf-8", errors="replace"):
            files.append(str(path.relative_to(ROOT)))
    return files


def step_pytest_gpu(ctx: Context) -> dict[str, Any]:
    files = gpu_test_files()
    if not files:
        raise RuntimeError("no test file uses the gpu marker")
    junit = ctx.tmp / "pytest-gpu.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={junit}", *files]
    env = {**os.environ, **ctx.env}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(60, ctx.remaining() - 150))
    suite = ET.parse(junit).getroot() if junit.exists() else None
    suite = suite.find("testsuite") if suite is not None and suite.tag == "testsuites" else suite
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} if suite is not None else {}
    # both streams: a crash before pytest's summary (an import error, a CUDA abort) is only on stderr
    info = {"files": files, "returncode": res.returncode, **counts, "tail": res.stdout[-2000:],
            "stderr_tail": res.stderr[-2000:]}  # fmt: skip
    if res.returncode != 0 or not counts.get("tests"):
        raise RuntimeError(f"pytest -m gpu: {json.dumps(info)}")
    if not ctx.plan.cpu and counts.get("skipped"):
        raise RuntimeError(f"gpu tests skipped on a GPU machine: {json.dumps(info)}")
    return info


# --- the service over HTTP -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(rgb: torch.Tensor) -> bytes:
    from PIL import Image

    arr = (rgb[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def mask_png(mask: torch.Tensor) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> torch.Tensor:
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def start_service(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    official = save_checkpoint(official_deblur(ctx), ctx.tmp / "deblur-official", provenance={"made_by": "gpu_check"})
    tasks = {t: {"checkpoint": str(get_task(t).default_checkpoint_path())} for t in ("deblur", "inpaint")}
    tasks[OFFICIAL_TASK] = {"checkpoint": str(official)}
    port = free_port()
    env = {
        **os.environ,
        **ctx.env,
        "DIFFIR_TASKS": json.dumps(tasks),
        "DIFFIR_DEVICE": plan.device.type,
        "DIFFIR_BACKEND": "torch",
        "DIFFIR_PRECISION": "fp32" if plan.cpu else "fp16",
        "DIFFIR_MAX_BATCH_SIZE": str(plan.max_batch),
        "DIFFIR_MAX_WAIT_MS": "5",
        "DIFFIR_QUEUE_SIZE": "512",
        "DIFFIR_WARMUP_SIZE": str(plan.warmup_size),
        "DIFFIR_LOG_LEVEL": "warning",
        "DIFFIR_LOG_JSON": "false",
    }
    env.setdefault("PYTHONPATH", str(ROOT))
    env.pop("DIFFIR_API_KEY", None)
    log = (ctx.out / "service.log").open("wb")
    ctx.server = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    ctx.url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.perf_counter() + min(240.0, max(30.0, ctx.remaining() - 90))
    while time.perf_counter() < deadline:
        if ctx.server.poll() is not None:
            raise RuntimeError(f"service exited with {ctx.server.returncode}: {log_tail(ctx)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ctx.url + "/readyz", timeout=2).status_code == 200:
                return {}
        time.sleep(0.25)
    raise RuntimeError(f"service not ready in time: {log_tail(ctx)}")


def log_tail(ctx: Context) -> str:
    path = ctx.out / "service.log"
    return path.read_text(errors="replace")[-1500:] if path.exists() else ""


def stop_service(ctx: Context) -> None:
    if ctx.server is not None and ctx.server.poll() is None:
        ctx.server.terminate()
        try:
            ctx.server.wait(30)
        except subprocess.TimeoutExpired:
            ctx.server.kill()
    ctx.server = None


def step_http(ctx: Context) -> dict[str, Any]:
    import httpx

    started = time.perf_counter()
    info: dict[str, Any] = start_service(ctx)
    info["ready_after_s"] = round(time.perf_counter() - started, 1)
    described = httpx.get(ctx.url + "/tasks", timeout=10).json()
    rows = described["tasks"] if isinstance(described, dict) else described
    info["providers"] = {r["name"]: {"provider": r.get("provider"), "precision": r.get("precision")} for r in rows}
    bad = [n for n, r in info["providers"].items() if not str(r["provider"]).startswith(ctx.plan.device.type)]
    size, seed, failed = ctx.plan.parity_size, 3, list(bad)
    for task in ("deblur", "inpaint"):
        _, image, mask = task_input(task, size)
        with torch.inference_mode():
            ref = ctx.net(task).forward_any_size(network_input(image, mask), noise=noise_for_seed(seed)).clamp(0, 1)
        if mask is not None:
            ref = composite(image, mask, ref)
            files = {
                "image": ("image.png", png_bytes(image), "image/png"),
                "mask": ("mask.png", mask_png(mask), "image/png"),
            }
            r = httpx.post(f"{ctx.url}/restore/{task}", params={"seed": seed}, files=files, timeout=120)
        else:
            r = httpx.post(
                f"{ctx.url}/restore/{task}",
                params={"seed": seed},
                content=png_bytes(image),
                headers={"content-type": "image/png"},
                timeout=120,
            )
        entry: dict[str, Any] = {"status": r.status_code, "content_type": r.headers.get("content-type")}
        if r.status_code == 200:
            got = decode_png(r.content)
            entry["shape_ok"] = got.shape == ref.shape
            if entry["shape_ok"]:
                entry["psnr_vs_cpu_db"] = round(psnr(got, (ref * 255).round() / 255), 2)
                entry["max_abs_err_vs_cpu"] = round((got - ref).abs().max().item(), 4)
            entry["ok"] = entry["shape_ok"] and entry.get("psnr_vs_cpu_db", 0) >= HTTP_MIN_PSNR
        else:
            entry["ok"], entry["body"] = False, r.text[:300]
        info[task] = entry
        if not entry["ok"]:
            failed.append(task)
    if failed:
        raise RuntimeError(f"HTTP check failed for {', '.join(failed)}: {json.dumps(info)}; log: {log_tail(ctx)}")
    return info


async def _load(url: str, body: bytes, clients: int, per_client: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    batches: list[int] = []
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one_client() -> None:
            for _ in range(per_client):
                t0 = time.perf_counter()
                r = await client.post(url, content=body, headers={"content-type": "image/png"})
                latencies.append(time.perf_counter() - t0)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                batches.append(int(r.headers.get("x-batch-size", "0")))

        await asyncio.gather(*(one_client() for _ in range(clients)))  # warm-up: new shapes, new buckets
        latencies.clear(), batches.clear(), statuses.clear()
        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    lat, n = sorted(latencies), len(latencies)
    return {
        "concurrency": clients,
        "requests": len(lat),
        "images_per_s": round(len(lat) / elapsed, 1),
        "p50_ms": round(1e3 * lat[(n - 1) // 2], 1),
        "p95_ms": round(1e3 * lat[max(0, math.ceil(0.95 * n) - 1)], 1),
        "mean_batch": round(sum(batches) / len(batches), 2),
        "max_batch": max(batches),
        "statuses": statuses,
    }


def step_throughput(ctx: Context) -> dict[str, Any]:
    if ctx.server is None or ctx.server.poll() is not None:
        raise RuntimeError("the service from the http step is not running")
    plan, size = ctx.plan, ctx.plan.speed_size
    body = png_bytes(photo_like(size))
    info: dict[str, Any] = {
        "size": size,
        "precision": "fp32" if plan.cpu else "fp16",
        "max_batch": plan.max_batch,
        "official_preset": plan.official_preset,
    }
    bad = []
    for task in (OFFICIAL_TASK, "deblur"):
        rows = []
        for clients in plan.concurrency:
            if ctx.remaining() < 30:
                rows.append({"concurrency": clients, "skipped": "time budget"})
                continue
            row = asyncio.run(_load(f"{ctx.url}/restore/{task}", body, clients, plan.requests_per_client))
            rows.append(row)
            if set(row["statuses"]) != {200}:
                bad.append(f"{task} at concurrency {clients}: {row['statuses']}")
        info[task] = rows
    best = max((r.get("images_per_s", 0) for r in info[OFFICIAL_TASK]), default=0)
    info["official_deblur_best_images_per_s"] = best
    info["target"] = {"images_per_s": THROUGHPUT_TARGET, "met": best >= THROUGHPUT_TARGET} if not plan.cpu else None
    if bad:
        raise RuntimeError(f"non-200 answers: {'; '.join(bad)}: {json.dumps(info)}")
    return info


STEPS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "environment": step_environment,
    "eager_parity": step_eager_parity,
    "torchscript": step_torchscript,
    "eager_speed": step_eager_speed,
    "onnxruntime": step_onnxruntime,
    "pytest_gpu": step_pytest_gpu,
    "http": step_http,
    "throughput": step_throughput,
}


# --- the runner ------------------------------------------------------------------------------------
class Report:
    """`gpu_check.json` in the output folder, rewritten (atomically) after every step."""

    def __init__(self, out: Path, plan: Plan) -> None:
        self.path = out / "gpu_check.json"
        self.data: dict[str, Any] = {
            "mode": "cpu dry run" if plan.cpu else "cuda",
            "plan": asdict(plan),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "steps": {},
            "writes": 0,
            "finished": False,
        }

    def record(self, name: str, status: str, seconds: float, details: Any) -> None:
        self.data["steps"][name] = {"status": status, "seconds": round(seconds, 1), "details": details}
        self.write()

    def write(self) -> None:
        self.data["writes"] += 1
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        tmp.replace(self.path)


def run(out: Path, plan: Plan, selected: list[str] | None, broken: str | None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, plan)
    report.write()
    with tempfile.TemporaryDirectory(prefix="diffir-gpu-check-") as tmp:
        ctx = Context(plan, out, Path(tmp))
        provide_packages(ctx)
        try:
            for name, fn in STEPS.items():
                if selected and name not in selected:
                    continue
                if ctx.remaining() <= 0:
                    report.record(name, "fail", 0.0, {"error": "not run: the time budget is spent"})
                    continue
                LOG.info("step %s", name)
                started = time.perf_counter()
                try:
                    if name == broken:
                        raise RuntimeError(f"deliberately broken (DIFFIR_GPU_CHECK_BREAK={broken})")
                    status, details = "pass", fn(ctx)
                except Unavailable as exc:
                    status, details = "unavailable", {"reason": str(exc)}
                except Exception as exc:
                    status = "fail"
                    details = {
                        "error": f"{type(exc).__name__}: {str(exc)[:4000]}",
                        "traceback": traceback.format_exc()[-3000:],
                    }
                    if plan.device.type == "cuda":
                        torch.cuda.empty_cache()
                report.record(name, status, time.perf_counter() - started, details)
                LOG.info("%s %s (%.1f s)", status.upper(), name, time.perf_counter() - started)
        finally:
            stop_service(ctx)
    failed = [n for n, s in report.data["steps"].items() if s["status"] == "fail"]
    report.data.update(finished=True, failed=failed, total_s=round(time.perf_counter() - ctx.started, 1))
    report.write()
    write_summary(out, report.data)
    for name, step in report.data["steps"].items():
        LOG.info("%-12s %-11s %6.1f s", name, step["status"], step["seconds"])
    if failed:
        LOG.error("FAILED: %s (details in %s)", ", ".join(failed), report.path)
    return 1 if failed else 0


def write_summary(out: Path, data: dict[str, Any]) -> None:
    """A short markdown table next to the JSON, for notes and bench/results/."""
    env = data["steps"].get("environment", {}).get("details", {})
    lines = [
        f"# GPU check ({data['mode']}), {data['started_utc']}",
        "",
        f"Device: {env.get('device', 'cpu') if isinstance(env, dict) else 'cpu'}; torch {torch.__version__}; "
        f"total {data.get('total_s')} s; failed: {', '.join(data.get('failed', [])) or 'none'}",
        "",
        "| step | status | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {s['status']} | {s['seconds']} |" for n, s in data["steps"].items()]
    speed = data["steps"].get("throughput", {}).get("details", {})
    if isinstance(speed, dict) and OFFICIAL_TASK in speed:
        lines += [
            "",
            f"Through HTTP at {speed['size']}² ({speed['precision']}, max batch {speed['max_batch']}):",
            "",
            "| model | concurrency | images/s | p50 ms | p95 ms | mean batch |",
            "|---|---|---|---|---|---|",
        ]
        for task in (OFFICIAL_TASK, "deblur"):
            for r in speed.get(task, []):
                if "images_per_s" in r:
                    cells = (task, r["concurrency"], r["images_per_s"], r["p50_ms"], r["p95_ms"], r["mean_batch"])
                    lines.append("| " + " | ".join(map(str, cells)) + " |")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json/.md and service.log")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gpu_check %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    plan = Plan.for_machine(os.environ.get("DIFFIR_GPU_CHECK_CPU") == "1")
    if os.environ.get("DIFFIR_GPU_CHECK_BUDGET_S"):  # the visit script shares its time with the training recipe
        plan = dataclasses.replace(plan, budget_s=float(os.environ["DIFFIR_GPU_CHECK_BUDGET_S"]))
    selected = [s for s in os.environ.get("DIFFIR_GPU_CHECK_STEPS", "").split(",") if s] or None
    unknown = set(selected or ()) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; known: {', '.join(STEPS)}")
    return run(args.out, plan, selected, os.environ.get("DIFFIR_GPU_CHECK_BREAK") or None)


if __name__ == "__main__":
    sys.exit(main())
