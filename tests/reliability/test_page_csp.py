"""The web page works under its own strict Content-Security-Policy in a real browser (Debian Chromium via
Playwright, no `bypass_csp`): it loads, lists the tasks, and the browser reports no CSP violation.

Playwright's sync API runs in a worker thread here, so its event loop never touches the asyncio tests.
"""

from __future__ import annotations

import threading

import pytest

from tests.browser.support import CHROMIUM, CHROMIUM_ARGS
from tests.service.test_server import Server, env_for

pytestmark = pytest.mark.timeout(120)


def _visit(url: str, out: dict) -> None:
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(30_000)
                page.on("console", lambda m: out["console"].append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: out["errors"].append(str(e)))
                response = page.goto(url)
                out["csp"] = response.headers.get("content-security-policy") if response else None
                page.wait_for_selector("body[data-state=idle]")
                page.wait_for_selector("#task option[value='deblur']", state="attached")
                out["options"] = page.locator("#task option").count()
                out["task_enabled"] = page.locator("#task").is_enabled()
            finally:
                browser.close()
    except Exception as exc:  # reported by the test in the main thread
        out["errors"].append(repr(exc))


def test_page_runs_under_its_csp(checkpoints) -> None:
    pytest.importorskip("playwright.sync_api", reason="needs the playwright package (dev extra)")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    srv = Server(env_for(checkpoints))
    try:
        srv.wait_ready()
        out: dict = {"console": [], "errors": []}
        worker = threading.Thread(target=_visit, args=(srv.url + "/", out), daemon=True)
        worker.start()
        worker.join(90)
        assert not worker.is_alive(), "the browser did not finish"
    finally:
        srv.stop()
    assert out["csp"] and "script-src 'self'" in out["csp"], out
    assert not out["errors"], out["errors"]
    violations = [m for m in out["console"] if "Content Security Policy" in m or "Refused to" in m]
    assert not violations, violations
    assert out["options"] >= 3 and out["task_enabled"], out
