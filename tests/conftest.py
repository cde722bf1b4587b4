"""Suite-wide defaults.

The service's default backend is `auto`, which times every candidate (and builds ONNX exports)
at start-up: right for a deployment, wasted seconds for each of the suite's many servers. Tests
get the eager torch backend unless they set `DIFFIR_BACKEND` or `backend=` themselves
(tests/service/test_auto_backend.py does); subprocess servers inherit this environment.
"""

from __future__ import annotations

import os

os.environ.setdefault("DIFFIR_BACKEND", "torch")


def pytest_collection_modifyitems(config, items):
    """`gpu`-marked tests need CUDA: without a device they are reported as skipped, with that reason
    (never as passed); `bench/gpu_check.sh` runs them on a GPU, where a skip fails the check."""
    import pytest
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch sees none (bench/gpu_check.sh runs these on a GPU)")
    for item in items:
        # The marker itself, not `"gpu" in item.keywords`: keywords also hold parametrize ids, and the
        # deployment tests of the GPU compose setup (id "gpu") need no device.
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
