"""System programs some tests need (Chromium, Prometheus, nginx): Debian packages `make system-deps` installs.

Where one is missing the test is skipped and names it; CI sets `DIFFIR_REQUIRE_SYSTEM_DEPS=1` after
installing them (.ci/run), which turns such a skip into a failure, so CI never passes by skipping.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ENV = "DIFFIR_REQUIRE_SYSTEM_DEPS"
DEBIAN_PACKAGES = {"prometheus": "prometheus", "promtool": "prometheus", "nginx": "nginx", "chromium": "chromium"}


def missing(name: str, where: str = "") -> NoReturn:
    message = f"{name} is not installed{where} (Debian package {DEBIAN_PACKAGES[name]}: `make system-deps`)"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{message}; {REQUIRE_ENV} is set, so this is an error")
    pytest.skip(message)
