"""Training data: unpaired folders degraded on the fly, or paired lq/ + gt/ folders.

Reproducibility design: sample number `k` (a global counter over the whole run) is generated from
`numpy.random.default_rng([seed, k])` alone: which image, where to crop, which flip/rotation, and
every degradation parameter. A step's batch is a fixed range of sample numbers, computed from the
patch/batch schedule. So a run resumed at step `s` sees exactly the batches it would have seen,
whatever the number of DataLoader workers, and DDP ranks take disjoint ranges.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from training.degradations import Degradation, MotionBlur, network_input
from training.imageio import list_images, read_uint8, to_tensor

PRELOAD_LIMIT = 4000


@dataclass(frozen=True)
class Phase:
    """`steps` iterations with `patch`-pixel GT crops and `batch` crops per process."""

    steps: int
    patch: int
    batch: int


class PatchSchedule:
    """Progressive patch sizes (Restormer/DiffIR deblur style); the last phase repeats forever."""

    def __init__(self, phases: Sequence[Phase]) -> None:
        if not phases:
            raise ValueError("at least one phase is needed")
        self.phases = tuple(phases)

    def phase_at(self, step: int) -> Phase:
        start = 0
        for ph in self.phases:
            if step < start + ph.steps:
                return ph
            start += ph.steps
        return self.phases[-1]

    def first_sample(self, step: int, world: int) -> int:
        """Global number of the first sample of `step` (all ranks together)."""
        total, start = 0, 0
        for ph in self.phases:
            n = min(max(step - start, 0), ph.steps)
            total += n * ph.batch * world
            start += ph.steps
            if step < start:
                return total
        return total + (step - start) * self.phases[-1].batch * world


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for each step from `start` to `stop`, this rank's (sample number, patch) list."""

    def __init__(self, schedule: PatchSchedule, start: int, stop: int, rank: int = 0, world: int = 1) -> None:
        self.schedule, self.start, self.stop, self.rank, self.world = schedule, start, stop, rank, world

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            ph = self.schedule.phase_at(step)
            base = self.schedule.first_sample(step, self.world) + self.rank * ph.batch
            yield [(base + i, ph.patch) for i in range(ph.batch)]


class ImageStore:
    """uint8 RGB images by index; preloaded for small folders (the shared train set), else read lazily."""

    def __init__(self, paths: Sequence[Path], preload: bool | None = None) -> None:
        self.paths = list(paths)
        if not self.paths:
            raise FileNotFoundError("no training images found")
        preload = len(self.paths) <= PRELOAD_LIMIT if preload is None else preload
        self._cache = [read_uint8(p) for p in self.paths] if preload else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self._cache[i] if self._cache is not None else read_uint8(self.paths[i])


def random_crop(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    """A size x size crop; images smaller than that are reflect-padded first."""
    h, w = img.shape[:2]
    if h < size or w < size:
        img = np.pad(img, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="reflect")
        h, w = img.shape[:2]
    y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return img[y : y + size, x : x + size]


def dihedral(t: torch.Tensor, code: int) -> torch.Tensor:
    """One of the 8 flip/rot90 combinations of a (..., H, W) tensor."""
    if code & 4:
        t = t.transpose(-1, -2)
    return torch.rot90(t, code & 3, dims=(-2, -1)).contiguous()


class UnpairedDataset(Dataset):
    """HQ images only; each sample is cropped, augmented and degraded from its own seeded generator."""

    def __init__(self, folders: Sequence[str | Path], degradation: Degradation, seed: int = 0, augment: bool = True):
        self.store = ImageStore(list_images(folders))
        self.degradation = degradation
        self.seed = seed
        self.augment = augment
        # Blur needs real context around the crop, otherwise every patch has padded borders.
        self.margin = 16 if isinstance(degradation, MotionBlur) else 0

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        k, patch = item
        rng = np.random.default_rng([self.seed, k])
        img = self.store[int(rng.integers(len(self.store)))]
        m = self.margin
        gt = to_tensor(random_crop(rng, img, patch + 2 * m))
        if self.augment:
            gt = dihedral(gt, int(rng.integers(8)))
        params = self.degradation.draw(rng, gt.shape[-2], gt.shape[-1])
        out = self.degradation.apply(gt, params)
        lq, mask = out.lq, out.mask
        if m:
            gt, lq = gt[:, m:-m, m:-m], lq[:, m:-m, m:-m]
            mask = mask[:, m:-m, m:-m] if mask is not None else None
        sample = {"gt": gt.contiguous(), "lq": network_input(lq, mask).contiguous()}
        if mask is not None:
            sample["mask"] = mask.contiguous()
        return sample


class PairedDataset(Dataset):
    """`lq/` and `gt/` folders with matching file names (e.g. GoPro pairs); paired random crops."""

    def __init__(self, root: str | Path, scale: int = 1, seed: int = 0, augment: bool = True) -> None:
        root = Path(root)
        gt_paths = list_images([root / "gt"])
        lq_by_name = {p.stem: p for p in list_images([root / "lq"])}
        missing = [p.name for p in gt_paths if p.stem not in lq_by_name]
        if missing:
            raise FileNotFoundError(f"{root}/lq lacks {len(missing)} files of gt/, e.g. {missing[:3]}")
        self.gt = ImageStore(gt_paths)
        self.lq = ImageStore([lq_by_name[p.stem] for p in gt_paths])
        self.scale, self.seed, self.augment = scale, seed, augment

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        k, patch = item
        rng = np.random.default_rng([self.seed, k])
        i = int(rng.integers(len(self.gt)))
        gt_img, lq_img = self.gt[i], self.lq[i]
        s = self.scale
        lp = patch // s
        h, w = lq_img.shape[:2]
        if gt_img.shape[0] != h * s or gt_img.shape[1] != w * s:
            raise ValueError(f"{self.gt.paths[i].name}: gt {gt_img.shape[:2]} is not {s}x lq {(h, w)}")
        if h < lp or w < lp:
            raise ValueError(f"{self.lq.paths[i].name}: {h}x{w} is smaller than the LQ patch {lp}")
        y, x = int(rng.integers(h - lp + 1)), int(rng.integers(w - lp + 1))
        lq = to_tensor(lq_img[y : y + lp, x : x + lp])
        gt = to_tensor(gt_img[y * s : (y + lp) * s, x * s : (x + lp) * s])
        if self.augment:
            code = int(rng.integers(8))
            lq, gt = dihedral(lq, code), dihedral(gt, code)
        return {"gt": gt, "lq": lq}


def _worker_init(_: int) -> None:
    """Workers ignore Ctrl-C: the terminal sends it to the whole process group, and the main process
    must be able to finish its step and save with its workers still alive."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def make_loader(
    dataset: Dataset,
    schedule: PatchSchedule,
    start: int,
    stop: int,
    workers: int = 2,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over steps [start, stop) of the schedule; its i-th batch is step start + i."""
    sampler = StepBatchSampler(schedule, start, stop, rank, world)
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs = {"worker_init_fn": _worker_init, "prefetch_factor": 4, "persistent_workers": False}
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory, **kwargs)
