"""Schemathesis fuzzing of the OpenAPI schema in-process (ASGI, tiny random-weight models, lifespan running).

Every operation gets generated inputs (valid and invalid by the schema); the checks: no 5xx, the status code
is one the schema documents, the content type and body match the documented response. Examples are bounded
so the run stays well under a minute on a busy 2-core machine.
"""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.http.app import create_app
from tests.reliability.conftest import record
from tests.service.conftest import make_settings

pytestmark = pytest.mark.timeout(120)
MAX_EXAMPLES = 40
TASKS = ("deblur", "sr-x4", "inpaint")


def test_openapi_fuzz(checkpoints) -> None:
    settings = make_settings(
        checkpoints, max_body_bytes=200_000, max_input_pixels=256 * 256, max_output_pixels=512 * 512
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    seen: dict[str, set[int]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/restore/{task}", "/tasks", "/healthz", "/readyz"}
    _wait_ready(next(op for op in operations if op.path == "/readyz"))

    for operation in operations:
        _fuzz(operation, seen)
    assert len(seen) == len(operations)
    record("fuzz", {"examples_per_operation": MAX_EXAMPLES, "statuses": {k: sorted(v) for k, v in seen.items()}})


def _wait_ready(readyz) -> None:
    """The models load behind an open port (restores answer 503 `not_ready` meanwhile): fuzz the ready service.
    Schemathesis keeps one lifespan per application, so this probe and the fuzzed calls share it."""
    deadline = time.monotonic() + 60
    while (status := readyz.Case().call().status_code) != 200:
        assert status == 503 and time.monotonic() < deadline, f"/readyz {status}, not ready within 60 s"
        time.sleep(0.05)


def _fuzz(operation, seen: dict[str, set[int]]) -> None:
    label = f"{operation.method.upper()} {operation.path}"
    calls = {"n": 0}

    @given(case=operation.as_strategy())
    @hsettings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        if "task" in (case.path_parameters or {}):  # most generated names are unknown: aim half at real tasks
            calls["n"] += 1
            if calls["n"] % 2:
                case.path_parameters["task"] = TASKS[calls["n"] // 2 % len(TASKS)]
        response = case.call()
        seen.setdefault(label, set()).add(response.status_code)
        asked_deadline = "timeout" in (case.query or {}) and response.status_code == 504
        if asked_deadline:  # the client's own (fuzzed, possibly microsecond) deadline passed: its answer, not a fault
            assert response.json()["code"] == "deadline_exceeded", response.text[:300]
        else:
            assert response.status_code < 500, (label, response.status_code, response.text[:300])
        case.validate_response(
            response, checks=[status_code_conformance, content_type_conformance, response_schema_conformance]
        )

    run()
