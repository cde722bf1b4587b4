"""The real evaluation images, for the tests that score shipped models on them.

They come from the data root when `make data` has filled it; else from a local mirror of the corpus
(`$DIFFIR_DATA_MIRROR`, or a `shared/data` folder beside the checkout), fetched and verified by the
same command into the test session's temporary folder. With neither, the test is skipped and says so.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from training.data import DATA_ENV, DATA_ROOT, FETCH_HINT, REPO_ROOT
from training.data.fetch import fetch, verify
from training.data.manifest import load_sets, select

MIRROR_ENV = "DIFFIR_DATA_MIRROR"
_verified: dict[tuple[str, ...], Path] = {}


def local_mirror() -> str | None:
    env = os.environ.get(MIRROR_ENV)
    if env:
        return env
    beside = REPO_ROOT.parent / "shared" / "data"
    return str(beside) if beside.is_dir() else None


def evaluation_root(scratch: Path, *names: str) -> Path:
    """A data root holding the named sets (verified), or a skip naming what is missing and how to get it."""
    if names in _verified:
        return _verified[names]
    sets = select(load_sets(), list(names))
    if not verify(sets, DATA_ROOT):
        root = DATA_ROOT
    elif (mirror := local_mirror()) is not None:
        root = scratch / "data-from-mirror"
        fetch(sets, root, mirror, show_progress=False)
    else:
        pytest.skip(f"needs the {', '.join(names)} images in {DATA_ROOT}: {FETCH_HINT} (or set {DATA_ENV})")
    _verified[names] = root
    return root
