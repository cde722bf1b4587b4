#!/usr/bin/env bash
# GPU check for the service, for an NVIDIA machine without network access (finishes within 8 minutes).
#
#   bench/gpu_check.sh [WHEELS_DIR]        # WHEELS_DIR: local wheels for missing packages (default ./wheels)
#
# 1. installs what the machine lacks (FastAPI, uvicorn, pydantic-settings, ...) from WHEELS_DIR only;
# 2. eager parity on CUDA vs CPU: fp32, fp16, bf16 (deblur-small and sr-x4-small);
# 3. ONNX Runtime: the provider really in use (CUDAExecutionProvider needs onnxruntime-gpu) and parity;
# 4. the service end to end: `python -m service` with DIFFIR_DEVICE=cuda on a loopback port, /tasks
#    must report a cuda provider, POST /restore/deblur must answer a PNG;
# 5. images/s for eager fp32 and fp16 at batch 1, 2, 4, 8, 16 for 256² and 512²;
# then prints a short table last. Exit status 0 only when every check passed.
# DIFFIR_GPU_CHECK_CPU=1 runs the same script on a CPU with tiny sizes (to test the script itself).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="${1:-${DIFFIR_WHEELS:-wheels}}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

need=$("$PY" - <<'EOF'
import importlib.util
mods = {"fastapi": "fastapi", "uvicorn": "uvicorn", "pydantic_settings": "pydantic-settings",
        "multipart": "python-multipart", "prometheus_client": "prometheus-client", "httpx": "httpx",
        "PIL": "pillow", "png": "pypng", "tifffile": "tifffile", "safetensors": "safetensors",
        "onnxruntime": "onnxruntime-gpu", "onnx": "onnx", "numpy": "numpy"}
print(" ".join(pkg for mod, pkg in mods.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$need" ]; then
  echo "installing from $WHEELS: $need"
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" $need
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 470 "$PY" - <<'EOF'
import io, json, os, socket, subprocess, sys, tempfile, time, warnings
from pathlib import Path

import torch

from models import DiffIRS2, get_preset, save_checkpoint
from models.graphs import FullGraph

CPU_DRY = os.environ.get("DIFFIR_GPU_CHECK_CPU") == "1"
if not torch.cuda.is_available() and not CPU_DRY:
    print("FAIL: no CUDA device visible to torch", file=sys.stderr)
    sys.exit(1)
DEV = torch.device("cpu" if CPU_DRY else "cuda")
SIZES = (32, 64) if CPU_DRY else (256, 512)
BATCHES = (1, 2) if CPU_DRY else (1, 2, 4, 8, 16)
results, failures, table = {}, [], []
tmp = Path(tempfile.mkdtemp())


def check(name, ok, detail):
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    results[name] = {"ok": bool(ok), "detail": detail}
    if not ok:
        failures.append(name)


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(0) if DEV.type == 'cuda' else 'cpu (dry run)'}")
nets = {}
for preset in ("deblur-small", "sr-x4-small"):
    torch.manual_seed(0)
    nets[preset] = DiffIRS2(get_preset(preset)).eval()

# --- 2. eager parity ------------------------------------------------------------------------
for preset, net in nets.items():
    m = net.config.size_multiple
    lq = torch.rand(2, 3, 4 * m, 6 * m, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 256, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = net(lq, noise=noise)
        scale = ref.abs().max().item()
        gpu = net.to(DEV)
        for dtype, tol in ((torch.float32, 1e-3), (torch.float16, 3e-2), (torch.bfloat16, 1e-1)):
            if DEV.type == "cpu" and dtype != torch.float32:
                continue
            g = gpu.to(dtype)
            out = g(lq.to(DEV, dtype), noise=noise.to(DEV, dtype)).float().cpu()
            err = (out - ref).abs().max().item() / max(scale, 1e-6)
            check(f"eager {preset} {str(dtype).split('.')[-1]} vs cpu", err <= tol, f"rel max err {err:.2e} (tol {tol})")
        net.to("cpu", torch.float32)

# --- 3. ONNX Runtime: provider truth and parity ------------------------------------------------
net = nets["deblur-small"]
ckpt = save_checkpoint(net, tmp / "deblur")
onnx_dir = tmp / "onnx"
onnx_dir.mkdir()
path = onnx_dir / "deblur.full.onnx"
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(FullGraph(net).eval(), (torch.rand(1, 3, 64, 64), torch.randn(1, 256)), str(path),
                      input_names=["lq", "noise"], output_names=["image"], opset_version=17, dynamo=False,
                      dynamic_axes={"lq": {0: "b", 2: "h", 3: "w"}, "noise": {0: "b"}, "image": {0: "b", 2: "h", 3: "w"}})
import hashlib
meta = json.loads(ckpt.with_suffix(".json").read_text())
meta.update(sha256=hashlib.sha256(path.read_bytes()).hexdigest(), graph="full", artifact=path.name,
            inputs=["lq", "noise"], outputs=["image"], size_multiple=8)
path.with_suffix(".json").write_text(json.dumps(meta))
import onnxruntime as ort
from service.runtime.artifacts import find_graphs
from service.runtime.onnx_backend import OnnxBackend
backend = OnnxBackend(find_graphs(path), DEV)
truth = backend.sessions["full"].get_providers()[0]
available = ort.get_available_providers()
want = "CPUExecutionProvider" if DEV.type == "cpu" else "CUDAExecutionProvider"
check("onnxruntime reports the provider in use", backend.provider == truth, f"{backend.provider} (available: {available})")
check("onnxruntime runs on " + want, truth == want,
      truth if truth == want else f"{truth}: install onnxruntime-gpu matching this CUDA/cuDNN")
lq, noise = torch.rand(2, 3, 64, 96), torch.randn(2, 256)
with torch.inference_mode():
    err = (backend.run(lq, noise) - net(lq, noise=noise)).abs().max().item()
check("onnxruntime parity vs eager cpu", err <= 1e-3, f"max abs err {err:.2e}")

# --- 3b. TorchScript traced on the CPU (as the export does), loaded onto the device -----------------
ts_path = tmp / "deblur.full.ts"
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with torch.no_grad():
        torch.jit.trace(FullGraph(net).eval(), (torch.rand(1, 3, 64, 64), torch.randn(1, 256)), check_trace=False).save(str(ts_path))
try:
    ts = torch.jit.load(str(ts_path), map_location=DEV)
    with torch.inference_mode():
        got = ts(lq.to(DEV), noise.to(DEV)).cpu()
        err = (got - net(lq, noise=noise)).abs().max().item()
    check("torchscript (CPU-traced) on " + DEV.type, err <= 1e-3, f"max abs err {err:.2e}")
except Exception as exc:  # e.g. a device baked into the trace
    check("torchscript (CPU-traced) on " + DEV.type, False, f"{type(exc).__name__}: {str(exc)[:200]}")

# --- 4. the service end to end on CUDA -------------------------------------------------------------
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
env = {**os.environ, "DIFFIR_TASKS": json.dumps({"deblur": {"checkpoint": str(ckpt)}}),
       "DIFFIR_DEVICE": DEV.type, "DIFFIR_PRECISION": "fp32" if CPU_DRY else "fp16", "DIFFIR_LOG_LEVEL": "warning"}
proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port)], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
import httpx
from PIL import Image
try:
    url, ready = f"http://127.0.0.1:{port}", False
    for _ in range(600):
        if proc.poll() is not None:
            break
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                ready = True
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    check("service ready on " + DEV.type, ready, "readyz 200" if ready else (proc.stderr.read().decode()[-300:] if proc.poll() is not None else "timeout"))
    if ready:
        provider = httpx.get(url + "/tasks").json()["tasks"][0]["provider"]
        check("service reports a " + DEV.type + " provider", provider.startswith(DEV.type), provider)
        buf = io.BytesIO()
        Image.new("RGB", (SIZES[0], SIZES[0]), (120, 60, 30)).save(buf, "PNG")
        r = httpx.post(url + "/restore/deblur", content=buf.getvalue(), headers={"content-type": "image/png"}, timeout=120)
        check("service restores over HTTP", r.status_code == 200 and r.headers["content-type"] == "image/png",
              f"{r.status_code} {r.headers.get('server-timing')}")
finally:
    proc.terminate()
    proc.wait(30)

# --- 5. images/s -------------------------------------------------------------------------------------
net = nets["deblur-small"].to(DEV)
for dtype in (torch.float32,) if CPU_DRY else (torch.float32, torch.float16):
    g = net.to(dtype)
    for size in SIZES:
        row = []
        for b in BATCHES:
            lq = torch.rand(b, 3, size, size, device=DEV, dtype=dtype)
            noise = torch.randn(b, 256, device=DEV, dtype=dtype)
            try:
                with torch.inference_mode():
                    g(lq, noise=noise)
                    sync()
                    reps, t0 = 3 if CPU_DRY else 10, time.perf_counter()
                    for _ in range(reps):
                        g(lq, noise=noise)
                    sync()
                    row.append(f"{b * reps / (time.perf_counter() - t0):.1f}")
            except torch.OutOfMemoryError:
                row.append("oom")
                torch.cuda.empty_cache()
        table.append((str(dtype).split(".")[-1], size, row))
    net.to(torch.float32)

(Path(os.environ.get("DIFFIR_GPU_CHECK_OUT", tmp)) / "gpu_check.json").write_text(
    json.dumps({"checks": results, "images_per_s": table, "batches": BATCHES}, indent=2))
print()
print(f"deblur-small eager images/s on {torch.cuda.get_device_name(0) if DEV.type == 'cuda' else 'cpu'}")
print(f"{'dtype':<9}{'size':>6} " + "".join(f"{'b' + str(b):>9}" for b in BATCHES))
for dtype, size, row in table:
    print(f"{dtype:<9}{size:>6} " + "".join(f"{v:>9}" for v in row))
print(f"checks: {len(results) - len(failures)}/{len(results)} passed" + (f"; FAILED: {', '.join(failures)}" if failures else ""))
sys.exit(1 if failures else 0)
EOF
