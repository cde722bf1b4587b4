"""axe-core's accessibility rules (labels, names, roles, contrast, ...) on every state of the page."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.support import Server

axe_sync = pytest.importorskip("axe_playwright_python.sync_playwright", reason="needs axe-playwright-python")

pytestmark = pytest.mark.timeout(120)


def violations(page) -> list[str]:
    results = axe_sync.Axe().run(page).response
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:4]}"
        for v in results["violations"]
    ]


def test_no_axe_violations_in_any_state(open_page, server: Server, image_file, tmp_path: Path):
    found = {}
    for viewport in ({"width": 1280, "height": 900}, {"width": 390, "height": 844}):
        page = open_page(viewport=viewport)
        size = f"{viewport['width']}px"
        found[f"{size} loaded"] = violations(page)

        page.get_by_label("Task").select_option("inpaint")
        page.locator("#image-input").set_input_files(image_file(40, 30))
        page.wait_for_selector("#mask-editor:not([hidden])")
        found[f"{size} mask editor"] = violations(page)

        page.get_by_label("Task").select_option("sr-x4")
        with page.expect_response("**/restore/**"):
            page.get_by_role("button", name="Restore").click()
        page.wait_for_selector("body[data-state=done]")
        found[f"{size} result"] = violations(page)

        bogus = tmp_path / "bogus.bin"
        bogus.write_bytes(b"\x00" * 64)
        page.locator("#image-input").set_input_files(bogus)
        page.wait_for_function("document.getElementById('image-info').textContent.includes('bogus')")
        with page.expect_response("**/restore/**"):
            page.get_by_role("button", name="Restore").click()
        page.wait_for_selector("body[data-state=error]")
        found[f"{size} error"] = violations(page)
    bad = {state: v for state, v in found.items() if v}
    assert not bad, "\n".join(f"{state}: {line}" for state, lines in bad.items() for line in lines)
