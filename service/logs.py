"""Structured JSON log lines (one object per line; request ids, never image data).

Our `diffir` logger and uvicorn's own loggers (`uvicorn`, and through it `uvicorn.error` and
`uvicorn.access`) share one handler and format, so a log collector sees one JSON stream.
"""

from __future__ import annotations

import json
import logging
import time

LOGGER = "diffir"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# Loggers given our handler; uvicorn's children (`uvicorn.error`, `uvicorn.access`) propagate to `uvicorn`.
HANDLED_LOGGERS = (LOGGER, "uvicorn")


def configure_logging(level: str, as_json: bool) -> None:
    """Configure the `diffir` and `uvicorn` loggers (idempotent; leaves other loggers alone)."""
    formatter = JsonFormatter() if as_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    for name in HANDLED_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        logger.propagate = False
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        handler = logging.StreamHandler()
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    for child in ("uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(child)
        for handler in list(logger.handlers):  # anything uvicorn's default config left would print twice
            logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def log_event(message: str, level: int = logging.INFO, *, exc_info: bool = False, **fields: object) -> None:
    logging.getLogger(LOGGER).log(level, message, exc_info=exc_info, extra={"fields": fields})
