"""Shared fixtures: tiny random-weight models for every task kind, settings and an ASGI client.

The tiny networks (dim 8, one block per level) restore a 64x64 image in milliseconds, so the
whole service test folder stays fast on a busy 2-core machine.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from models import CPENConfig, DiffIRS2, DIRformerConfig, ModelConfig, save_checkpoint
from service.settings import Settings

TINY_G = DIRformerConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1)
TINY_CONFIGS = {
    "deblur": ModelConfig(name="tiny-deblur", kind="deblur", dirformer=TINY_G, cpen=CPENConfig(n_resblocks=1)),
    "sr-x4": ModelConfig(name="tiny-sr-x4", kind="sr", scale=4, dirformer=TINY_G, cpen=CPENConfig(n_resblocks=1)),
    "inpaint": ModelConfig(
        name="tiny-inpaint",
        kind="inpaint",
        dirformer=DIRformerConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0),
        cpen=CPENConfig(n_resblocks=1),
    ),
}


def tiny_model(task: str, seed: int = 0) -> DiffIRS2:
    torch.manual_seed(seed)
    net = DiffIRS2(TINY_CONFIGS[task]).eval()
    with torch.no_grad():  # small random weights keep activations tame (outputs near the input)
        for p in net.parameters():
            p.mul_(0.5)
    return net


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {task: save_checkpoint(tiny_model(task), root / task, {"version": "test-1"}) for task in TINY_CONFIGS}


def make_settings(checkpoints: dict[str, Path], **overrides: object) -> Settings:
    tasks = {name: {"checkpoint": str(path)} for name, path in checkpoints.items()}
    base: dict[str, object] = {
        "tasks": tasks,
        "warmup_size": 16,
        "max_wait_ms": 50,  # generous: a full batch closes at once, and a busy CI CPU must not split one
        "max_batch_size": 4,  # batching on, even on the CPU, so tests exercise it
        "log_json": True,
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def settings(checkpoints: dict[str, Path]) -> Settings:
    return make_settings(checkpoints)


class LiveApp:
    """The app with its lifespan running, plus an httpx client over the ASGI transport."""

    def __init__(self, app, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def state(self):
        return self.app.state.service

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        import asyncio

        for _ in range(int(timeout_s / 0.02)):
            if self.state.ready:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("service did not become ready")


async def start_app(settings: Settings, **kwargs: object) -> AsyncIterator[LiveApp]:
    from contextlib import AsyncExitStack

    from service.http.app import create_app

    app = create_app(settings, **kwargs)  # type: ignore[arg-type]
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        client = await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://test"))
        live = LiveApp(app, client)
        await live.wait_ready()
        yield live


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[LiveApp]:
    async for app in start_app(settings):
        yield app


# --- image helpers -------------------------------------------------------------------------------
def gradient(w: int = 40, h: int = 24, mode: str = "RGB") -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(w + h - 2, 1)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8)).convert(mode)


def encode(im: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- fake backends (pixel-exact I/O checks, fault injection) ---------------------------------------
from service.runtime.base import ExportedPrior  # noqa: E402  (the one-call prior of an exported graph)


class IdentityBackend(ExportedPrior):
    """Returns its input (nearest-upsampled for SR): isolates the I/O path for pixel-exact checks.
    Its prior is one unit of work, like an exported graph's without the eager model beside it."""

    name = "identity"
    provider = "cpu"
    supports_tiling = True

    def __init__(self, kind: str = "deblur", scale: int = 1) -> None:
        from service.runtime.base import ModelInfo

        self.info = ModelInfo(
            variant=f"identity-{kind}",
            kind=kind,
            scale=scale,
            size_multiple=8,
            pad_mode="reflect",
            in_channels=4 if kind == "inpaint" else 3,
            ipr_dim=256,
            version="test",
            sha256="0" * 64,
            source="identity",
        )
        self.calls = 0

    def run(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.restore(lq, noise)

    def prior(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return torch.zeros(lq.shape[0], 256)

    def restore(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        x = lq[:, :3]
        s = self.info.scale
        return x.repeat_interleave(s, 2).repeat_interleave(s, 3) if s > 1 else x.clone()


class GatedBackend:
    """Wraps a backend; each `run` blocks until `release` is set (overload and deadline tests)."""

    def __init__(self, inner, fail: bool = False) -> None:
        import threading

        self.inner = inner
        self.info, self.name, self.provider = inner.info, inner.name, inner.provider
        self.supports_tiling = inner.supports_tiling
        self.release = threading.Event()
        self.entered = threading.Event()
        self.fail = fail

    def run(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        self.release.wait(30)
        if self.fail:
            raise RuntimeError("injected backend failure")
        return self.inner.run(lq, noise)

    def prior(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.inner.prior(lq, noise)

    def prior_run(self, lq: torch.Tensor, noise: torch.Tensor, tile_edge: int):  # type: ignore[no-untyped-def]
        return self.inner.prior_run(lq, noise, tile_edge)

    def restore(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        return self.inner.restore(lq, ipr)


class SpyGate(GatedBackend):
    """A gated backend that records the batch size of every model call."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.batch_sizes: list[int] = []

    def run(self, lq, noise):
        self.batch_sizes.append(int(lq.shape[0]))
        return super().run(lq, noise)


class LogRecords(logging.Handler):
    """Keeps every log record it is given (attach it to the service's logger)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, message: str) -> list[dict]:
        """The structured fields of every record whose message is `message`."""
        return [dict(r.fields) for r in self.records if r.getMessage() == message]  # type: ignore[attr-defined]


def identity_backends() -> dict[str, IdentityBackend]:
    return {"deblur": IdentityBackend(), "sr-x4": IdentityBackend("sr", 4), "inpaint": IdentityBackend("inpaint")}


@pytest.fixture
async def identity_live() -> AsyncIterator[LiveApp]:
    settings = Settings(warmup_size=0, max_wait_ms=1, tasks={"deblur": {}, "sr-x4": {}, "inpaint": {}})
    async for app in start_app(settings, backends=identity_backends()):
        yield app
