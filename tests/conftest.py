"""Suite-wide defaults.

The service's default backend is `auto`, which times every candidate (and builds ONNX exports)
at start-up: right for a deployment, wasted seconds for each of the suite's many servers. Tests
get the eager torch backend unless they set `DIFFIR_BACKEND` or `backend=` themselves
(tests/service/test_auto_backend.py does); subprocess servers inherit this environment.
"""

from __future__ import annotations

import os

os.environ.setdefault("DIFFIR_BACKEND", "torch")
