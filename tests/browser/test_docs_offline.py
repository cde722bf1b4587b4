"""`/docs` (Swagger UI) renders with every request to another origin blocked, as on an air-gapped
cluster: its scripts and styles come from the service itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.support import Server


@pytest.fixture
def offline_page(browser, server: Server):
    """A page whose requests to anything but the server are aborted (and recorded)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    elsewhere: list[str] = []

    def only_the_server(route) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort("internetdisconnected")

    ctx.route("**/*", only_the_server)
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page, elsewhere
    ctx.close()
    assert not errors, errors


def test_swagger_ui_renders_offline(offline_page, server: Server, shots: Path) -> None:
    page, elsewhere = offline_page
    page.goto(server.url + "docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "diffir-serve" in page.locator(".swagger-ui .info .title").inner_text()
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/restore/{task}" in p.replace("\u200b", "") for p in paths), paths
    page.screenshot(path=str(shots / "docs-offline.png"))
    assert not elsewhere, f"/docs reached outside the server: {elsewhere}"
