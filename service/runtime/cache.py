"""The service's writable cache folder: exports built on first use and auto-tuning choices.

`DIFFIR_CACHE_DIR` when set (it must be writable), else `$XDG_CACHE_HOME/diffir-serve`, else
`~/.cache/diffir-serve`, else a folder in the system temp dir (containers with a read-only root
and a writable /tmp). Everything in it can be deleted at any time; it is rebuilt on demand.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
APP = "diffir-serve"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError:
        return False
    return True


def default_locations() -> list[Path]:
    xdg = os.environ.get("XDG_CACHE_HOME")
    found = [Path(xdg) / APP] if xdg else []
    found.append(Path.home() / ".cache" / APP)
    found.append(Path(tempfile.gettempdir()) / f"{APP}-{os.getuid() if hasattr(os, 'getuid') else 'user'}")
    return found


def cache_root(configured: Path | None) -> Path:
    """The first writable location; a configured one that is not writable is an error."""
    if configured is not None:
        if not _writable(configured):
            raise RuntimeError(f"DIFFIR_CACHE_DIR={configured} is not a writable folder")
        return configured
    for folder in default_locations():
        if _writable(folder):
            return folder
        log.info("cache folder %s is not writable; trying the next one", folder)
    raise RuntimeError(
        f"no writable cache folder (tried {', '.join(map(str, default_locations()))}); set DIFFIR_CACHE_DIR"
    )
