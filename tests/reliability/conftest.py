"""Fixtures for the reliability suite: the tiny random-weight checkpoints of tests/service, reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.service.conftest import anyio_backend, checkpoints  # noqa: F401  (fixtures)

OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "reliability"


def record(name: str, figures: dict) -> None:
    """Write a test's measured figures to test-output/reliability/<name>.json (docs/reliability.md quotes them)."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def figures() -> dict:
    return {}
