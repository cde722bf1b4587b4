"""`DIFFIR_BACKEND=auto`: time every way this machine can run a task's model, keep the fastest
one whose output stays within `MIN_PSNR_DB` of the fp32 output, and remember the choice.

Each candidate (torch eager fp32/bf16, ONNX Runtime fp32, ... see `service.runtime.loader`) is
built, run once on a synthetic input (warm-up, and the output compared with the fp32 reference:
the first candidate), then timed `reps` times (the minimum counts: the CPU is shared, and the
minimum is the least disturbed run). The choice and every candidate's numbers are written to
`<cache>/autotune/<key>.json`; the key covers the machine (CPU model and ISA flags, cores and
threads, device), the library versions, the model's sha256, the candidates and the input size,
so a later start on the same machine builds only the chosen candidate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.runtime.base import Backend
from service.startup import step

log = logging.getLogger(__name__)
MIN_PSNR_DB = 45.0
"""A candidate whose output is further than this from the fp32 output is rejected (on [0, 1])."""


@dataclass(frozen=True)
class Candidate:
    label: str
    """e.g. "torch-bf16", "onnxruntime-fp32"."""
    backend: str
    precision: str
    build: Callable[[], Backend]
    eligible: bool = True
    """False for a reference that only judges the others (an explicit DIFFIR_PRECISION)."""


@dataclass
class Trial:
    label: str
    backend: str
    precision: str
    seconds: float | None = None
    """Fastest of the timed runs on the tuning input; None when it could not run."""
    psnr_db: float | None = None
    """Against the fp32 reference output (inf for the reference itself)."""
    accepted: bool = False
    note: str = ""


@dataclass
class Tuning:
    chosen: str
    input_size: tuple[int, int]
    trials: list[Trial] = field(default_factory=list)
    cached: bool = False
    key: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for trial in out["trials"]:  # JSON has no infinity
            if trial["psnr_db"] is not None and math.isinf(trial["psnr_db"]):
                trial["psnr_db"] = "inf"
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tuning:
        trials = []
        for t in data["trials"]:
            psnr = t.get("psnr_db")
            trials.append(Trial(**{**t, "psnr_db": math.inf if psnr == "inf" else psnr}))
        return cls(data["chosen"], tuple(data["input_size"]), trials, bool(data.get("cached")), data.get("key", ""))


def psnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR of `out` against `ref`, both clamped to the displayable [0, 1]; NaN anywhere is -inf."""
    if out.shape != ref.shape or not bool(torch.isfinite(out).all()):
        return -math.inf
    mse = (out.float().clamp(0, 1) - ref.float().clamp(0, 1)).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def tune(
    candidates: list[Candidate],
    sample: tuple[torch.Tensor, torch.Tensor],
    reps: int = 2,
    min_psnr_db: float = MIN_PSNR_DB,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[Backend, Tuning]:
    """Build and time every candidate; return the fastest accepted backend and the record.

    `candidates[0]` is the fp32 reference: it is always accepted unless it cannot run at all.
    """
    lq, noise = sample
    tuning = Tuning(chosen="", input_size=(int(lq.shape[-2]), int(lq.shape[-1])))
    reference: torch.Tensor | None = None
    best: tuple[float, Backend] | None = None
    for i, cand in enumerate(candidates, 1):
        trial = Trial(cand.label, cand.backend, cand.precision)
        tuning.trials.append(trial)
        try:
            with step("candidate", f"timing {cand.label} ({i} of {len(candidates)})", candidate=cand.label):
                backend = cand.build()
                out = backend.run(lq, noise)  # warm-up, and the output to compare
                times = []
                for _ in range(reps):
                    started = clock()
                    backend.run(lq, noise)
                    times.append(clock() - started)
        except Exception as exc:  # a candidate this machine cannot run is recorded, never fatal
            trial.note = f"unavailable: {_first_line(exc)}"
            log.info("auto backend: %s unavailable (%s)", cand.label, trial.note)
            continue
        trial.seconds = min(times)
        if reference is None:
            reference, trial.psnr_db = out, math.inf
        else:
            trial.psnr_db = psnr_db(out, reference)
        trial.accepted = cand.eligible and trial.psnr_db >= min_psnr_db
        if not cand.eligible:
            trial.note = "reference only (DIFFIR_PRECISION asks for another precision)"
        elif not trial.accepted:
            trial.note = f"rejected: {trial.psnr_db:.1f} dB against fp32 (< {min_psnr_db:g})"
        elif best is None or trial.seconds < best[0]:
            best = (trial.seconds, backend)
            tuning.chosen = cand.label
        log.info("auto backend: %s %.3f s, %.1f dB", cand.label, trial.seconds, trial.psnr_db)
    if best is None:
        raise RuntimeError("auto backend: no candidate could run: " + "; ".join(t.note for t in tuning.trials))
    return best[1], tuning


def tuning_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class ChoiceCache:
    """One JSON file per key under `<cache>/autotune/`."""

    def __init__(self, root: Path, key: str) -> None:
        self.key = key
        self.path = root / "autotune" / f"{key}.json"

    def load(self) -> Tuning | None:
        try:
            return Tuning.from_dict(json.loads(self.path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, tuning: Tuning) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{id(tuning)}")
        tmp.write_text(json.dumps({**tuning.as_dict(), "cached": False, "key": self.key}, indent=2) + "\n")
        tmp.replace(self.path)


def choose(
    candidates: list[Candidate],
    sample: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    cache: ChoiceCache | None,
    reps: int = 2,
    min_psnr_db: float = MIN_PSNR_DB,
    clock: Callable[[], float] = time.perf_counter,
) -> Backend:
    """The cached choice when there is one (only it is built), else `tune` and cache the result.

    The backend returned carries `tuning` (the record, as a dict) and `precision`.
    """
    by_label = {c.label: c for c in candidates}
    cached = cache.load() if cache else None
    if cached is not None and cached.chosen in by_label:
        try:
            backend = by_label[cached.chosen].build()
        except Exception as exc:  # the cached choice no longer builds: tune again
            log.warning("auto backend: cached choice %s failed (%s); tuning again", cached.chosen, _first_line(exc))
        else:
            cached.cached = True
            return _annotate(backend, by_label[cached.chosen], cached)
    backend, tuning = tune(candidates, sample(), reps, min_psnr_db, clock)
    if cache is not None:
        tuning.key = cache.key
        try:
            cache.save(tuning)
        except OSError as exc:
            log.warning("auto backend: could not cache the choice (%s)", exc)
    return _annotate(backend, by_label[tuning.chosen], tuning)


def _annotate(backend: Backend, cand: Candidate, tuning: Tuning) -> Backend:
    backend.precision = cand.precision  # type: ignore[attr-defined]
    backend.tuning = tuning.as_dict()  # type: ignore[attr-defined]
    return backend
