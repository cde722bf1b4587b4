"""One task's model work: jobs in, restored images out (runs on the inference thread).

The engine owns the task-specific tensor plumbing so the batcher stays generic: the inpainting
input and composite (defined once in `models.inpainting`), padding to the shape bucket and
cropping back, the per-request seed rule (one noise row per request, concatenated; see the README
for what else a result's bytes may depend on), the tiled restoration of large inputs as separate
units (`start_tiled`, `step_tiled`, `finish_tiled`: the service runs other batches between them),
and the refusal of non-finite model outputs (`faults.NonFiniteOutput`: never encoded as an image,
and failing only the job whose output it is).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from models.diffir import noise_for_seed
from models.inpainting import composite, network_input
from models.sizing import pad_bottom_right, padded_size
from service.runtime.base import Backend
from service.scheduling.cost import Work
from service.scheduling.faults import NonFiniteOutput
from service.scheduling.tiling import TiledRestoration, TilingCancelled, geometry


@dataclass
class Job:
    """One request's decoded input: (1, 3, h, w) RGB in [0, 1], an optional (1, 1, h, w) 0/1 mask."""

    image: torch.Tensor
    mask: torch.Tensor | None
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set by the request handler when it gives up; long (tiled) work stops at the next tile."""

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])


@dataclass(frozen=True)
class EngineLimits:
    tile_size: int
    tile_overlap: int
    tile_threshold_pixels: int
    bucket_multiple: int
    prior_max_pixels: int = 2048 * 2048


class Engine:
    """Stateless apart from the backend; `run_batch` is called from one thread at a time."""

    def __init__(self, name: str, backend: Backend, limits: EngineLimits) -> None:
        self.name = name
        self.backend = backend
        self.info = backend.info
        self.limits = limits

    # --- batching keys ----------------------------------------------------------------------
    def work(self, h: int, w: int) -> Work:
        """What an h x w input costs this model (padded area times scale squared: `cost.Work`)."""
        return Work(h, w, self.info.size_multiple, self.info.scale)

    def cost(self, job: Job) -> int:
        """The batchers' measure of a job (batch and queue caps): its `Work.cost`."""
        return self.work(*job.size).cost

    def tiled(self, job: Job) -> bool:
        return self.tiles(*job.size)

    def tiles(self, h: int, w: int) -> bool:
        """The one place that decides: inputs costing over the threshold are restored tile by tile."""
        return self.backend.supports_tiling and self.work(h, w).cost > self.limits.tile_threshold_pixels

    def bucket(self, job: Job) -> Any:
        """Requests with equal keys run in one batch: the padded (H, W); tiled jobs run alone."""
        if self.tiled(job):
            return ("tiled", id(job))
        multiple = self.info.size_multiple
        coarse = self.limits.bucket_multiple or getattr(self.backend, "bucket_multiple", 0)  # setting, else backend's
        if coarse:
            multiple = -(-max(multiple, coarse) // multiple) * multiple
        return padded_size(*job.size, multiple)

    # --- model work -------------------------------------------------------------------------
    def network_input(self, job: Job) -> torch.Tensor:
        if not self.info.needs_mask:
            return job.image
        assert job.mask is not None
        return network_input(job.image, job.mask)

    def noise(self, jobs: list[Job]) -> torch.Tensor:
        return torch.cat([noise_for_seed(j.seed, 1, self.info.ipr_dim) for j in jobs])

    def run_batch(self, jobs: list[Job]) -> list[torch.Tensor | NonFiniteOutput]:
        """Restore jobs of one bucket; returns one (1, 3, h*s, w*s) tensor per job, same order, or
        in a job's place the `NonFiniteOutput` that fails that job alone (its companions are fine)."""
        with torch.inference_mode():  # no autograd bookkeeping; in-place post-processing allowed
            if len(jobs) == 1 and self.tiled(jobs[0]):
                outputs = [self._run_tiled(jobs[0])]
            else:
                outputs = self._run_padded(jobs)
            results: list[torch.Tensor | NonFiniteOutput] = []
            for job, out in zip(jobs, outputs):
                try:
                    results.append(self._finish(job, out))
                except NonFiniteOutput as exc:
                    results.append(exc)
            return results

    def _run_padded(self, jobs: list[Job]) -> list[torch.Tensor]:
        keys = {self.bucket(j) for j in jobs}
        if len(keys) != 1:
            raise ValueError(f"jobs of different buckets in one batch: {sorted(map(str, keys))}")
        (ph, pw) = keys.pop()
        batch = torch.cat(
            [pad_bottom_right(self.network_input(j), ph, pw, self.info.pad_mode) for j in jobs]  # type: ignore[arg-type]
        )
        out = self.backend.run(batch.contiguous(), self.noise(jobs))
        if out.shape[0] != len(jobs):
            raise RuntimeError(f"backend returned {out.shape[0]} outputs for {len(jobs)} inputs")
        s = self.info.scale
        return [out[i : i + 1, :, : j.size[0] * s, : j.size[1] * s] for i, j in enumerate(jobs)]

    def _prior_input(self, x: torch.Tensor) -> torch.Tensor:
        """The padded whole image, or for backends without a bounded-memory prior (exported graphs)
        and images above `prior_max_pixels`, an area-downscaled copy: an approximation of the IPR
        that keeps memory bounded (the torch backend computes the exact one window by window)."""
        h, w = x.shape[-2:]
        if not getattr(self.backend, "exact_large_prior", False) and h * w > self.limits.prior_max_pixels:
            factor = math.ceil(math.sqrt(h * w / self.limits.prior_max_pixels))
            x = F.avg_pool2d(x, factor, ceil_mode=True)
            h, w = x.shape[-2:]
        ph, pw = padded_size(h, w, self.info.size_multiple)
        return pad_bottom_right(x, ph, pw, self.info.pad_mode)  # type: ignore[arg-type]

    def _run_tiled(self, job: Job) -> torch.Tensor:
        """Synchronous tile loop for direct library use; the service drives the same units itself."""
        run = self._start_tiled(job)
        while True:
            if job.cancelled.is_set():
                raise TilingCancelled(f"stopped after {run.done} of {run.total} units (prior windows, tiles)")
            if not run.step():
                return run.result()

    def _start_tiled(self, job: Job) -> TiledRestoration:
        x = self.network_input(job)
        prior = self.backend.prior_run(self._prior_input(x), self.noise([job]), self.limits.tile_size)
        g = geometry(
            self.limits.tile_size,
            self.limits.tile_overlap,
            self.info.size_multiple,
            self.info.pad_mode,
            self.info.scale,
        )
        return TiledRestoration(x, prior, self.backend.restore, g)

    # --- the same, one unit of work per call (the service interleaves other batches between them) --
    def start_tiled(self, job: Job) -> TiledRestoration:
        """Plan the units: the global IPR's (window by window where the backend can), then the tiles."""
        with torch.inference_mode():
            return self._start_tiled(job)

    @staticmethod
    def step_tiled(run: TiledRestoration) -> bool:
        """Run one unit (a prior window or a tile); True while units remain."""
        with torch.inference_mode():
            return run.step()

    def finish_tiled(self, job: Job, run: TiledRestoration) -> torch.Tensor:
        with torch.inference_mode():
            return self._finish(job, run.result())

    def _finish(self, job: Job, out: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteOutput("the model returned non-finite values (NaN or inf) for this image")
        out = out.clamp_(0, 1)
        if self.info.needs_mask:
            assert job.mask is not None
            out = composite(job.image, job.mask, out)
        return out

    def warmup(self, size: int, batch_sizes: tuple[int, ...]) -> None:
        """Run the model once per batch size at a small shape (allocators, kernels, ORT graphs)."""
        if size <= 0:
            return
        for b in sorted(set(batch_sizes)):
            jobs = [
                Job(
                    torch.full((1, 3, size, size), 0.5),
                    torch.zeros((1, 1, size, size)) if self.info.needs_mask else None,
                    seed=i,
                )
                for i in range(b)
            ]
            for result in self.run_batch(jobs):
                if isinstance(result, Exception):
                    raise result
