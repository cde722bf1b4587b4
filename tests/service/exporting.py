"""Write exported artifacts the way `python -m training export` does, for tests only.

`<out>/<name>.<graph>.onnx|.ts` plus `<out>/<name>.<graph>.json` holding the checkpoint sidecar's
fields, the artifact's own sha256 and the graph's input/output description. The service must
never import `training`, so tests produce their own artifacts from tiny random models.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

from models.checkpoint import read_sidecar
from models.diffir import DiffIRS2
from models.graphs import GRAPHS


def _sidecar(net: DiffIRS2, checkpoint: Path, artifact: Path, graph: str) -> None:
    meta = dict(read_sidecar(checkpoint))
    inputs, output = GRAPHS[graph][1], GRAPHS[graph][2]
    meta.update(
        checkpoint_sha256=meta["sha256"],
        sha256=hashlib.sha256(artifact.read_bytes()).hexdigest(),
        graph=graph,
        inputs=list(inputs),
        outputs=[output],
        size_multiple=net.config.size_multiple,
        artifact=artifact.name,
        format="onnx" if artifact.suffix == ".onnx" else "torchscript",
    )
    artifact.with_suffix(".json").write_text(json.dumps(meta, indent=2))


def export(net: DiffIRS2, checkpoint: Path, out: Path, name: str, kind: str, graphs=("full", "prior", "restorer")):
    """Export `graphs` of `net` as ONNX (`kind="onnx"`) or TorchScript (`kind="ts"`); returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    m = net.config.size_multiple
    lq = torch.rand(1, net.config.image_channels, 2 * m, 3 * m)
    second = torch.randn(1, net.config.ipr_dim)
    paths = {}
    for graph in graphs:
        wrapper = GRAPHS[graph][0](net).eval()
        inputs, output = GRAPHS[graph][1], GRAPHS[graph][2]
        path = out / f"{name}.{graph}.{kind}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "onnx":
                axes = {inputs[0]: {0: "batch", 2: "height", 3: "width"}, inputs[1]: {0: "batch"}}
                axes[output] = {0: "batch"} if graph == "prior" else {0: "batch", 2: "out_h", 3: "out_w"}
                torch.onnx.export(
                    wrapper,
                    (lq, second),
                    str(path),
                    input_names=list(inputs),
                    output_names=[output],
                    dynamic_axes=axes,
                    opset_version=17,
                    dynamo=False,
                )
            else:
                with torch.no_grad():
                    torch.jit.trace(wrapper, (lq, second), check_trace=False).save(str(path))
        _sidecar(net, checkpoint, path, graph)
        paths[graph] = path
    return paths
