"""What the service is doing while it starts: for `/readyz`, and as JSON log lines with durations.

The port opens first; models load, `auto` tunes and exports run afterwards (`ServiceState.boot`).
Each of those is a *step*: a log line when it begins, one with its duration when it ends (or fails),
and while steps run a heartbeat line every `HEARTBEAT_S` seconds when nothing else was logged, so a
slow start is never a silent one. Steps nest (loading a task > tuning it > exporting a candidate);
`/readyz` shows the whole stack, innermost last.

Code deep in the loader reports through `step(...)`, which finds the progress of the start-up it runs
in through a context variable (set by `reporting`); outside a start-up (the local CLI, tests) it does
nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from service.logs import log_event

HEARTBEAT_S = 5.0
"""A log line at least this often while starting (Docker/k8s readers see a start-up that talks)."""

LOADING, WARMING, READY, FAILED = "loading", "warming", "ready", "failed"


@dataclass
class Step:
    kind: str
    """`load`, `tune`, `candidate`, `export`, `warm`: what a machine reading `/readyz` keys on."""
    message: str
    """For people: "loading task 2 of 3 (sr-x4)"."""
    fields: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0


class StartupProgress:
    """The phase (loading, warming, ready, failed), the running steps and the time since start.

    Written from the loading thread and read from the event loop: every access holds the lock.
    """

    def __init__(self, heartbeat_s: float = HEARTBEAT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.heartbeat_s = heartbeat_s
        self.started = clock()
        self.phase = LOADING
        self.error: str | None = None
        self.finished_steps = 0
        self._stack: list[Step] = []
        self._last_line = self.started
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # --- phases -------------------------------------------------------------------------------------
    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase
        if phase in (READY, FAILED):
            self._stop.set()

    def ready(self) -> None:
        self.set_phase(READY)
        self._log("ready", logging.INFO, seconds=round(self._clock() - self.started, 3))

    def fail(self, error: str) -> None:
        with self._lock:
            self.error = error
        self.set_phase(FAILED)
        self._log("start-up failed", logging.ERROR, error=error, seconds=round(self._clock() - self.started, 3))

    # --- steps --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def step(self, kind: str, message: str, **fields: Any) -> Iterator[Step]:
        current = Step(kind, message, fields, self._clock())
        with self._lock:
            self._stack.append(current)
        self._log("start-up step", logging.INFO, step=kind, detail=message, **fields)
        try:
            yield current
        except BaseException as exc:
            seconds = round(self._clock() - current.started, 3)
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self._log("start-up step failed", logging.WARNING, step=kind, detail=message, seconds=seconds,
                      error=error, **fields)  # fmt: skip
            raise
        else:
            seconds = round(self._clock() - current.started, 3)
            self._log("start-up step done", logging.INFO, step=kind, detail=message, seconds=seconds, **fields)
        finally:
            with self._lock:
                self._stack = [s for s in self._stack if s is not current]
                self.finished_steps += 1

    def snapshot(self) -> dict[str, Any]:
        """What `/readyz` says while not ready (and the heartbeat logs)."""
        now = self._clock()
        with self._lock:
            stack = list(self._stack)
            out: dict[str, Any] = {"status": self.phase, "elapsed_s": round(now - self.started, 1)}
            if self.error is not None:
                out["error"] = self.error
            out["steps_done"] = self.finished_steps
        if stack:
            out["step"] = stack[-1].kind
            out["message"] = " > ".join(s.message for s in stack)
            out["steps"] = [
                {"step": s.kind, "message": s.message, "elapsed_s": round(now - s.started, 1), **s.fields}
                for s in stack
            ]
        return out

    # --- the log ------------------------------------------------------------------------------------
    def _log(self, text: str, level: int, **fields: Any) -> None:
        with self._lock:
            self._last_line = self._clock()
        log_event(text, level, **fields)

    def start_heartbeat(self) -> None:
        """Log "starting" (with the snapshot) whenever `heartbeat_s` passed without a start-up line."""
        if self._beat is not None:
            return

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s / 5):
                with self._lock:
                    quiet = self._clock() - self._last_line >= self.heartbeat_s
                if quiet:
                    snapshot = self.snapshot()
                    snapshot["detail"] = snapshot.pop("message", None)  # `message` is log_event's own argument
                    self._log("starting", logging.INFO, **snapshot)

        self._beat = threading.Thread(target=beat, name="diffir-startup-heartbeat", daemon=True)
        self._beat.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=2)


_ACTIVE: ContextVar[StartupProgress | None] = ContextVar("diffir_startup", default=None)


@contextlib.contextmanager
def reporting(progress: StartupProgress) -> Iterator[StartupProgress]:
    """Within this block (and threads started with its context), `step()` reports to `progress`."""
    token = _ACTIVE.set(progress)
    try:
        yield progress
    finally:
        _ACTIVE.reset(token)


def step(kind: str, message: str, **fields: Any) -> contextlib.AbstractContextManager[Step | None]:
    """A step of the running start-up, or nothing outside one."""
    progress = _ACTIVE.get()
    return progress.step(kind, message, **fields) if progress is not None else contextlib.nullcontext()
