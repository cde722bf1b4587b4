"""One bad image among good ones: a NaN input is refused at decode, a NaN output fails only its request.

    .venv/bin/python -m bench.non_finite --out bench/results   # -> non_finite.json, non_finite.md

In process (httpx's ASGI transport), `deblur` with the shipped weights on the torch backend, batches of
up to 12 on the CPU (`DIFFIR_MAX_BATCH_SIZE=12`). Two runs of 12 concurrent 64² requests each:

* one of them a float TIFF (mode `F`) with a single NaN sample (the rest PNGs);
* all 12 PNGs, one of them black, with a fault injected into the model wrapper so that the black
  input's output comes back NaN (a stand-in for an fp16 overflow), the 11 others untouched.

For each: the statuses, how many requests shared the model call, and the time to the last answer.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.machine import cpu_flags
from models.tasks import TASKS
from service.runtime.torch_backend import TorchBackend
from service.settings import Settings
from tests.service.conftest import encode, gradient, start_app

PNG = {"content-type": "image/png"}


class NanForBlack:
    """The real backend, except that an all-black input's output is replaced by NaN."""

    def __init__(self, inner: TorchBackend) -> None:
        self.inner = inner
        self.info, self.name, self.provider = inner.info, inner.name, inner.provider
        self.supports_tiling, self.exact_large_prior = inner.supports_tiling, inner.exact_large_prior
        self.batches: list[int] = []

    def run(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(lq.shape[0]))
        out = self.inner.run(lq, noise)
        out[lq.amax(dim=(1, 2, 3)) == 0] = float("nan")
        return out

    def __getattr__(self, name: str):  # prior, restore, prior_run: the real ones
        return getattr(self.inner, name)


def nan_tiff(size: int) -> bytes:
    values = np.linspace(0, 1, size * size, dtype=np.float32).reshape(size, size)
    values[size // 2, size // 2] = float("nan")
    buf = io.BytesIO()
    Image.fromarray(values, mode="F").save(buf, "TIFF")
    return buf.getvalue()


async def burst(client, bodies: list[tuple[bytes, str]]) -> tuple[list, float]:
    started = time.perf_counter()
    rs = await asyncio.gather(
        *(client.post("/restore/deblur", content=b, headers={"content-type": t}) for b, t in bodies)
    )
    return rs, time.perf_counter() - started


async def measure() -> list[dict]:
    backend = NanForBlack(TorchBackend(TASKS["deblur"].default_checkpoint_path(), None, torch.device("cpu")))  # type: ignore[arg-type]
    settings = Settings(  # generous decode and request budgets: a busy shared CPU must not time a request out
        warmup_size=16, max_batch_size=12, max_wait_ms=1500, decode_timeout_s=120, deadline_s=600, tasks={"deblur": {}}
    )
    good = encode(gradient(64, 64))
    rows = []
    async for live in start_app(settings, backends={"deblur": backend}):
        await burst(live.client, [(good, "image/png")] * 12)  # warm: decode workers, kernels at batch 12
        cases = {
            "a float TIFF with one NaN sample among 11 PNGs": [(good, "image/png")] * 5
            + [(nan_tiff(64), "image/tiff")]
            + [(good, "image/png")] * 6,
            "12 PNGs in one batch, the model's output NaN for one of them": [(good, "image/png")] * 5
            + [(encode(Image.new("RGB", (64, 64))), "image/png")]
            + [(good, "image/png")] * 6,
        }
        for name, bodies in cases.items():
            calls = len(backend.batches)
            rs, seconds = await burst(live.client, bodies)
            codes = [r.status_code for r in rs]
            bad = rs[5]
            bad_code = bad.json().get("code") if bad.status_code != 200 else ""
            rows.append(
                {
                    "case": name,
                    "statuses": {str(c): codes.count(c) for c in sorted(set(codes))},
                    "bad_request": f"{bad.status_code} {bad_code}".strip(),
                    "model_calls": backend.batches[calls:],
                    "last_answer_s": round(seconds, 3),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    rows = asyncio.run(measure())
    flags = " ".join(cpu_flags()) or "none"
    result = {"machine": f"{torch.get_num_threads()} torch threads, flags: {flags}", "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "non_finite.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# One bad image among 12 (`python -m bench.non_finite`)",
        "",
        f"In process, `deblur` (shipped weights, torch, CPU, {result['machine']}), batches of up to 12; "
        "the bad request is the 6th of 12 sent at once.",
        "",
        "| case | statuses | the bad request | model calls (batch sizes) | last answer after |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        statuses = ", ".join(f"{n} × {c}" for c, n in r["statuses"].items())
        lines.append(f"| {r['case']} | {statuses} | {r['bad_request']} | {r['model_calls']} | {r['last_answer_s']} s |")
    (args.out / "non_finite.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
