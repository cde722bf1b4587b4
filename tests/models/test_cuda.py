"""On a CUDA device: what the CPU tests emulate (device moves, half precision) done for real.

Marked `gpu`: skipped with a reason where torch sees no CUDA device; `bench/gpu_check.sh` runs
them on a GPU, where a skip counts as a failure.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from models import DiffIRS2, load_model, noise_for_seed
from models.graphs import write_graph
from models.inpainting import network_input
from models.tasks import get_task
from models.tf32 import tf32

pytestmark = pytest.mark.gpu

# |CUDA - CPU fp32| on [0, 1] images; the CPU half-precision tests measure fp16 ~1e-3, bf16 ~7e-3
ABS_TOL = {torch.float32: 2e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def _image(size: int) -> torch.Tensor:
    small = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return F.interpolate(small, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _shipped(task: str) -> DiffIRS2:
    return load_model(get_task(task).default_checkpoint_path()).eval()


@pytest.fixture(autouse=True)
def _no_tf32():
    with tf32(False):
        yield


@pytest.mark.parametrize("task", ["deblur", "sr-x4"])
def test_cpu_exported_torchscript_runs_on_cuda(tmp_path, task):
    net = _shipped(task)
    path = tmp_path / f"{task}.full.ts"
    write_graph(net, "full", "torchscript", path)
    loaded = torch.jit.load(str(path), map_location="cuda")
    lq, noise = _image(64 // net.config.scale), noise_for_seed(0)
    with torch.inference_mode():
        ref = net(lq, noise=noise)
        out = loaded(lq.cuda(), noise.cuda()).cpu()
    assert (out - ref).abs().max() < ABS_TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_deblur_half_precision_at_1024(dtype):
    """1024²: where the shipped deblur weights' raw q·kᵀ sums (9.8e4) exceed float16's range."""
    net = _shipped("deblur")
    lq, noise = _image(1024), noise_for_seed(0)
    low = copy.deepcopy(net).to("cuda", dtype)
    with torch.inference_mode():
        ref = net.cuda()(lq.cuda(), noise=noise.cuda()).float()
        out = low(lq.to("cuda", dtype), noise=noise.to("cuda", dtype)).float()
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() < ABS_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_inpaint_half_precision_with_and_without_hole(dtype):
    net = _shipped("inpaint")
    image = _image(512)
    for mask in (
        torch.zeros(1, 1, 512, 512),
        (torch.rand(1, 1, 512, 512, generator=torch.Generator().manual_seed(1)) > 0.8).float(),
    ):
        x, noise = network_input(image, mask), noise_for_seed(0)
        low = copy.deepcopy(net).to("cuda", dtype)
        with torch.inference_mode():
            ref = net(x, noise=noise)
            out = low(x.to("cuda", dtype), noise=noise.to("cuda", dtype)).float().cpu()
        assert torch.isfinite(out).all()
        assert (out - ref).abs().max() < ABS_TOL[dtype]
