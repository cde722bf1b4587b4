"""Constants and helpers shared by the browser tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output" / "browser"
CHROMIUM = Path(os.environ.get("DIFFIR_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
API_KEY = "browser-test-key"
MAX_INPUT_PIXELS = 200 * 200
MAX_OUTPUT_PIXELS = 300 * 300
MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Server:
    url: str
    api_key: str

    def post(self, task: str, files: dict, **params: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.post(f"{self.url}restore/{task}", files=files, params=params, headers=headers, timeout=60)


# Chromium does not hand multipart bodies with files to the driver, so the tests record what the page
# sends from inside: every FormData given to XMLHttpRequest.send, files as byte arrays.
RECORD_SENT_FORMS = """
window.__sentForms = [];
const originalSend = XMLHttpRequest.prototype.send;
XMLHttpRequest.prototype.send = function (body) {
  if (body instanceof FormData) {
    const entries = [...body.entries()];
    window.__sentForms.push(Promise.all(entries.map(async ([name, value]) => [name, value instanceof Blob
      ? { filename: value.name ?? null, type: value.type, bytes: Array.from(new Uint8Array(await value.arrayBuffer())) }
      : { value }])));
  }
  return originalSend.call(this, body);
};
"""


def sent_form(page) -> dict[str, dict]:
    """The last multipart form the page sent: {field: {"filename", "type", "bytes"} or {"value"}}."""
    entries = page.evaluate("async () => await window.__sentForms.at(-1)")
    form = {}
    for name, value in entries:
        assert name not in form, f"field {name!r} sent twice"
        if "bytes" in value:
            value["bytes"] = bytes(value["bytes"])
        form[name] = value
    return form


def make_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with soft texture: every pixel distinct enough to see changes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin((x + y) / 5)], axis=-1)
    img = 40 + 170 * base + rng.normal(0, 6, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)
