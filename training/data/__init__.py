"""Where training and evaluation read their images, and how they get there (`python -m training.data`).

The data root is `data/` in the checkout (git ignores it; `./data` for an installed package), or
`$DIFFIR_DATA`. `make data` (or `diffir-train data fetch`) downloads every set into it, verified by
SHA-256, with the licence of each set named; see `training/data/sources.json` and
`python -m training.data list`.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "DIFFIR_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]
# A checkout (editable install) keeps its data beside the code; an installed package in the working folder.
_DEFAULT = REPO_ROOT / "data" if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd() / "data"
DATA_ROOT = Path(os.environ.get(DATA_ENV) or _DEFAULT)
FETCH_HINT = "`make data` (python -m training.data fetch) downloads it"
