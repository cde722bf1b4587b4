"""Graphs traced and frozen on the CPU (as the TorchScript export does) must run on any device.

A trace records every `device=` argument as a constant, and freezing keeps it; such a graph,
loaded onto CUDA, builds some tensors on the CPU and fails (or silently copies) at run time.
No CUDA device is needed to catch that: the graph is inspected for device constants, and then
moved to the `meta` device, where any tensor still created on the CPU makes the run fail just
as it would on a GPU.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from models import DiffIRS2, ModelConfig, inpainting
from models.config import CPENConfig, DIRformerConfig
from models.graphs import FullGraph


def _tiny(kind: str, scale: int = 1, hole_fill: str = "zero", fill_biharmonic_iterations: int = 100) -> DiffIRS2:
    cfg = ModelConfig(
        name=f"tiny-{kind}",
        kind=kind,  # type: ignore[arg-type]
        scale=scale,
        dirformer=DIRformerConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0 if kind == "inpaint" else 1),
        cpen=CPENConfig(n_resblocks=1),
        hole_fill=hole_fill,  # type: ignore[arg-type]
        fill_biharmonic_iterations=fill_biharmonic_iterations,
    )
    torch.manual_seed(0)
    return DiffIRS2(cfg).eval()


NETS = {
    "deblur": lambda: _tiny("deblur"),
    "sr-x4": lambda: _tiny("sr", scale=4),
    # one biharmonic iteration (and one per pyramid level, below): the same ops, a 100x smaller graph
    "inpaint-smooth": lambda: _tiny("inpaint", hole_fill="smooth", fill_biharmonic_iterations=1),
}


def _inputs(net: DiffIRS2, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    cfg = net.config
    m = cfg.size_multiple
    gen = torch.Generator().manual_seed(0)
    lq = torch.rand((2, cfg.image_channels, m, 2 * m), generator=gen)
    if cfg.kind == "inpaint":
        mask = (torch.rand((2, 1, m, 2 * m), generator=gen) > 0.7).float()
        lq = torch.cat([lq[:, :3] * (1 - mask), mask], dim=1)
    noise = torch.randn((2, cfg.ipr_dim), generator=gen)
    return lq.to(device), noise.to(device)


@pytest.fixture(scope="module", params=sorted(NETS))
def traced(request) -> tuple[DiffIRS2, torch.jit.ScriptModule]:
    """The `full` graph (it runs all the code of `prior` and `restorer`), traced on the CPU under
    no_grad as the TorchScript export does."""
    net = NETS[request.param]()
    with pytest.MonkeyPatch.context() as mp, torch.no_grad(), warnings.catch_warnings():
        mp.setattr(inpainting, "FILL_ITERATIONS", (1,) * (inpainting.FILL_LEVELS + 1))
        warnings.simplefilter("ignore")
        return net, torch.jit.trace(FullGraph(net).eval(), _inputs(net), check_trace=False)


def _device_constants(graph: torch._C.Graph) -> list[str]:
    """Every constant of type Device in the graph and its sub-blocks."""
    return [str(n).strip() for n in graph.findAllNodes("prim::Constant") if n.output().type().kind() == "DeviceObjType"]


def test_inspection_finds_a_traced_device():
    probe = torch.jit.trace(lambda z: torch.full((2,), 1.0, device=z.device) + z, torch.zeros(2))
    assert _device_constants(probe.graph)


def test_frozen_graph_holds_no_device_constant(traced):
    net, module = traced
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(module.eval())
    assert _device_constants(frozen.graph) == [], f"{net.config.name} bakes in a device"


def test_cpu_traced_graph_runs_after_a_device_move(traced):
    """Move the CPU trace to the `meta` device (as `map_location="cuda"` moves it to a GPU) and run it
    on meta inputs: a tensor the graph still creates on the CPU makes the run fail."""
    net, module = traced
    with torch.no_grad():
        ref = module(*_inputs(net))
        out = module.to("meta")(*_inputs(net, device="meta"))
    assert out.device.type == "meta" and out.shape == ref.shape
