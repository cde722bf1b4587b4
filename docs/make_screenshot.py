"""Regenerate docs/web-page.png: the web page after a real 4x super-resolution by the shipped `sr-x4` model.

The input is Kodak's kodim23 (the Kodak Lossless True Color Image Suite, released by the Eastman Kodak
Company for unrestricted usage), cropped and downscaled 4x with bicubic resampling; the page compares the
model's output with the same input upscaled by bicubic. Needs `make serve`'s environment plus Playwright
and Debian's Chromium (`make setup system-deps`), and Kodak24 in data/ (`make data`):

    .venv/bin/python docs/make_screenshot.py [--photo data/val/Kodak24/kodim23.png]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "web-page.png"
log = logging.getLogger("make_screenshot")


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_input(photo: Path, folder: Path) -> Path:
    """A 160x120 input: the photo's 640x480 centre, downscaled 4x (bicubic), as a camera phone crop might be."""
    im = Image.open(photo).convert("RGB")
    w, h = im.size
    box = ((w - 640) // 2, (h - 480) // 2, (w + 640) // 2, (h + 480) // 2)
    path = folder / f"{photo.stem}-small.png"
    im.crop(box).resize((160, 120), Image.Resampling.BICUBIC).save(path)
    return path


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, default=ROOT / "data/val/Kodak24/kodim23.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFIR_")}
    env |= {"DIFFIR_DEVICE": "cpu", "DIFFIR_BACKEND": "torch", "DIFFIR_LOG_LEVEL": "warning"}  # shipped models
    with tempfile.TemporaryDirectory() as tmp:
        image = small_input(args.photo, Path(tmp))
        server = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port)], cwd=ROOT, env=env)
        try:
            for _ in range(1800):  # bounded: 6 minutes for loading and warming the models
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "readyz", timeout=2).status_code == 200:
                        break
                if server.poll() is not None:
                    raise SystemExit("the service exited")
                time.sleep(0.2)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.goto(url)
                page.wait_for_selector("body[data-state=idle]")
                page.get_by_label("Task").select_option("sr-x4")
                page.locator("#image-input").set_input_files(image)
                page.wait_for_function("document.getElementById('image-info').textContent.length > 0")
                page.get_by_role("button", name="Restore").click()
                page.wait_for_selector("body[data-state=done]", timeout=120_000)
                page.get_by_label("Input upscaled with").select_option("bicubic")
                page.get_by_label("Divider").fill("50")
                page.screenshot(path=str(OUT), full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(60)
    log.info("wrote %s", OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
