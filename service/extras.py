"""The `serve` extra, checked before it is used: the client install (`pip install .`) does not have it.

`diffir-serve`, its `prepare` step and `diffir-restore` without `--server` run models in this process; in
a client-only install they stop with one line naming the extra to install instead of an import error.
"""

from __future__ import annotations

from importlib.util import find_spec

SERVE_MODULES = ("torch", "numpy", "safetensors", "PIL", "fastapi", "uvicorn", "pydantic_settings")
SERVE_INSTALL = "pip install 'diffir-serve[serve]'"


def missing_serve_modules() -> list[str]:
    return [m for m in SERVE_MODULES if find_spec(m) is None]


def needs_serve_extra(what: str) -> str | None:
    """One line saying that `what` needs the `serve` extra, or None when it is installed."""
    missing = missing_serve_modules()
    if not missing:
        return None
    return f"{what} needs the server (missing {', '.join(missing)}): {SERVE_INSTALL}"
