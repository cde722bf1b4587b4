"""Warnings raised by libraries in the server process become JSON log lines, with bounded memory.

Python remembers every warning text it has shown once (`__warningregistry__` of the warning's
module), so a decoder warning that quotes attacker-chosen values (EXIF tags, byte counts) would
grow that registry by one entry per distinct request for the life of the process. The `always`
action shows each warning without remembering it; `showwarning` is replaced by one JSON line per
warning (text truncated). Decode workers do the same and send their warnings back with the reply.
"""

from __future__ import annotations

import logging
import warnings
from contextvars import ContextVar
from pathlib import Path

from service.logs import log_event

WARNING_CHARS = 300
_installed = False
request_fields: ContextVar[dict[str, object] | None] = ContextVar("request_fields", default=None)
"""Set by the pipeline for each request (request id, task), so a warning names the request that caused it."""


def _log(message: Warning | str, category: type[Warning], filename: str, lineno: int, *_: object) -> None:
    text = f"{category.__name__}: {message}"[:WARNING_CHARS]
    fields = request_fields.get() or {}
    log_event("library warning", logging.WARNING, warning=text, source=f"{Path(filename).name}:{lineno}", **fields)


def route_warnings_to_log() -> None:
    """Idempotent: Pillow's and our warnings are always shown (never remembered), as JSON lines."""
    global _installed
    if _installed and warnings.showwarning is _log:
        return
    for module in (r"PIL(\.|$)", r"service(\.|$)"):
        warnings.filterwarnings("always", module=module)
    warnings.showwarning = _log
    _installed = True
