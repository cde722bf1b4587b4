"""Shared fixtures: tiny synthetic image folders and tiny training configs (fast on 2 busy cores)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import TrainConfig

TINY = {
    "model_dim": 8,
    "model_blocks": (1, 1, 1, 1),
    "model_heads": (1, 1, 2, 2),
    "model_cpen_blocks": 1,
    "model_cpen_feats": 8,
}


def synthetic_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth gradients plus a few sharp rectangles: learnable structure, not noise."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(6 * x + c + rng.uniform(0, 3)) * np.cos(4 * y + c) for c in range(3)], -1)
    for _ in range(4):
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        img[y0 : y0 + rng.integers(4, 12), x0 : x0 + rng.integers(4, 12)] = rng.uniform(0, 1, 3)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_images(folder: Path, n: int, h: int, w: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(synthetic_image(rng, h, w)).save(folder / f"img{i:02d}.png")
    return folder


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("train"), 3, 48, 64)


@pytest.fixture(scope="session")
def one_image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("one"), 1, 32, 32, seed=1)


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory: pytest.TempPathFactory):
    """`eval_data("Set5", ...)`: a data root with those sets (tests/evaluation_data.py), or a skip."""
    from tests.evaluation_data import evaluation_root

    return lambda *names: evaluation_root(tmp_path_factory.getbasetemp(), *names)


@pytest.fixture(autouse=True)
def _single_thread():
    torch.set_num_threads(1)
    yield


def tiny_config(out: Path, data: Path, **overrides) -> TrainConfig:
    base = TrainConfig(
        task="sr-x4",
        data=(str(data),),
        out=str(out),
        patches=(32,),
        batches=(2,),
        steps=6,
        workers=0,
        log_every=1,
        val_every=10_000,
        save_every=10_000,
        progress=False,
        ema=0.9,
        **TINY,
    )
    return dataclasses.replace(base, **overrides)
