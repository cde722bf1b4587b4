"""End-to-end fixtures for the web page: a real service process with tiny random-weight models, and
headless Debian Chromium driven by Playwright (never a downloaded browser).

The server runs with an API key and small pixel caps so the page's key handling and its client-side
limit checks are exercised against the server's own numbers. Screenshots go to test-output/browser/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from service.devserver import LiveServer, server_env
from tests.browser.support import (
    API_KEY,
    CHROMIUM,
    CHROMIUM_ARGS,
    MAX_BODY_BYTES,
    MAX_INPUT_PIXELS,
    MAX_OUTPUT_PIXELS,
    OUTPUT,
    RECORD_SENT_FORMS,
    Server,
    make_image,
)
from tests.system_tools import missing


def _tiny_checkpoints(folder: Path) -> dict[str, dict[str, str]]:
    import torch

    from models import CPENConfig, DiffIRS2, DIRformerConfig, ModelConfig, save_checkpoint

    torch.manual_seed(0)
    tasks = {}
    for task, kind, scale in (("deblur", "deblur", 1), ("sr-x4", "sr", 4), ("inpaint", "inpaint", 1)):
        cfg = ModelConfig(
            name=f"tiny-{task}",
            kind=kind,
            scale=scale,
            dirformer=DIRformerConfig(
                dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0 if kind == "inpaint" else 1
            ),
            cpen=CPENConfig(n_resblocks=1),
        )
        path = save_checkpoint(DiffIRS2(cfg).eval(), folder / f"tiny-{task}")
        tasks[task] = {"checkpoint": str(path)}
    return tasks


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real service (`python -m service`) on a free loopback port, tiny models, an API key."""
    folder = tmp_path_factory.mktemp("browser-server")
    env = server_env(
        DIFFIR_API_KEY=API_KEY,
        DIFFIR_DEVICE="cpu",
        DIFFIR_TORCH_THREADS="1",
        DIFFIR_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        DIFFIR_MAX_INPUT_PIXELS=str(MAX_INPUT_PIXELS),
        DIFFIR_MAX_OUTPUT_PIXELS=str(MAX_OUTPUT_PIXELS),
        DIFFIR_WARMUP_SIZE="16",
        DIFFIR_LOG_JSON="false",
        DIFFIR_LOG_LEVEL="warning",
        DIFFIR_TASKS=json.dumps(_tiny_checkpoints(folder / "models")),
    )
    with LiveServer(env, log=folder / "server.log") as srv:
        yield Server(url=srv.url + "/", api_key=API_KEY)


@pytest.fixture(scope="package")
def browser():
    """Debian's Chromium, headless, driven by Playwright (skips where either is missing).

    Package scope: Playwright's sync API keeps an event loop running in the main thread while it
    is open, which would break every later test that calls `asyncio.run`; it closes with this folder.
    """
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")
    if not CHROMIUM.exists():
        missing("chromium", f" at {CHROMIUM}")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class PageErrors(list):
    """Uncaught exceptions in the page; every test asserts there were none."""


@pytest.fixture
def open_page(browser, server: Server):
    """`open_page(viewport=..., key=True)` -> a loaded page (tasks listed), API key typed in."""
    contexts = []
    errors = PageErrors()

    def _open(viewport: dict | None = None, key: bool = True, **context_args):
        # The harness's string predicates (wait_for_function) run through eval, which the page's strict
        # Content-Security-Policy forbids; the page itself is checked under its CSP in tests/reliability.
        context_args.setdefault("bypass_csp", True)
        ctx = browser.new_context(
            viewport=viewport or {"width": 1280, "height": 900}, accept_downloads=True, **context_args
        )
        contexts.append(ctx)
        ctx.add_init_script(RECORD_SENT_FORMS)
        page = ctx.new_page()
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url)
        page.wait_for_selector("body[data-state=idle]")
        if key:
            page.locator("details.options summary").click()
            page.get_by_label("API key").fill(server.api_key)
        return page

    yield _open
    for ctx in contexts:
        ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="session")
def shots() -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT


@pytest.fixture
def image_file(tmp_path: Path):
    """`image_file(w, h, name=...)` -> path of a PNG test image."""

    def _make(width: int, height: int, name: str = "scene.png", seed: int = 0) -> Path:
        path = tmp_path / name
        Image.fromarray(make_image(width, height, seed)).save(path)
        return path

    return _make
