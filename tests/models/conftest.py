"""Shared fixtures for the model-core tests: the official reference fixtures in tests/fixtures/official."""

from __future__ import annotations

import pytest

from tests.official_fixtures import (
    FIXTURE_SETS,
    KEYS_DIR,
    fixture_data,
    official_config,
    official_weights_file,
    rel_err,
)

KEYS = KEYS_DIR
__all__ = ["FIXTURE_SETS", "KEYS", "FixtureSet", "rel_err"]


class FixtureSet:
    """One official variant: its inputs/outputs (`data`), configs and the verified official weights files."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data = fixture_data(name)
        self.s2_config = official_config(name, "S2")
        self.s1_config = official_config(name, "S1")
        self.s2_weights = official_weights_file(name, "S2")
        self.s1_weights = official_weights_file(name, "S1")


@pytest.fixture(scope="session", params=sorted(FIXTURE_SETS))
def fixture_set(request: pytest.FixtureRequest) -> FixtureSet:
    return FixtureSet(request.param)
