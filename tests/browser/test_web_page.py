"""The restoration page at `/`, end to end: headless Chromium against the real service process.

Each test saves a screenshot of the state it checks under test-output/browser/.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser.support import MAX_INPUT_PIXELS, MAX_OUTPUT_PIXELS, Server, make_image, sent_form

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------------------------------ helpers
def pixels(data: bytes | Path) -> np.ndarray:
    img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    return np.asarray(img.convert("RGB")).astype(np.int16)


def restore(page, expect: str = "done"):
    """Click Restore; return the request the page sent once the page shows the outcome."""
    with page.expect_request("**/restore/**") as req, page.expect_response("**/restore/**"):
        page.get_by_role("button", name="Restore").click()
    page.wait_for_selector("body[data-state=done], body[data-state=error]")
    state = page.get_attribute("body", "data-state")
    if state != expect:
        detail = page.inner_text("#error") if state == "error" else page.inner_text("#result-info")
        pytest.fail(f"expected the page to end {expect!r}, got {state!r}: {detail}")
    return req.value


def choose(page, task: str, image: Path) -> None:
    page.get_by_label("Task").select_option(task)
    page.locator("#image-input").set_input_files(image)
    page.wait_for_function("document.getElementById('image-info').textContent.length > 0")


def download(page, folder: Path):
    with page.expect_download() as info:
        page.locator("#download").click()
    d = info.value
    path = folder / d.suggested_filename
    d.save_as(path)
    return d.suggested_filename, path


# ------------------------------------------------------------------------------------------ tests
def test_page_is_served_and_lists_tasks(open_page, server: Server, shots: Path):
    page = open_page(key=False)
    assert page.title() == "DiffIR restoration"
    # everything comes from the service itself (no CDN, no web font), and it is small
    loaded = page.evaluate("performance.getEntriesByType('resource').map(e => [e.name, e.encodedBodySize])")
    assert loaded
    for url, _ in loaded:
        assert url.startswith((server.url, "data:", "blob:")), f"the page fetched {url}"
    static = Path(__file__).resolve().parents[2] / "service" / "web" / "static"
    assert sum(f.stat().st_size for f in static.rglob("*") if f.is_file()) < 120_000
    options = page.locator("#task option").evaluate_all("os => os.map(o => o.value)")
    assert {"deblur", "sr-x4", "inpaint"} <= set(options)
    page.get_by_label("Task").select_option("inpaint")
    assert "mask" in page.inner_text("#task-info")
    page.get_by_label("Task").select_option("sr-x4")
    assert "4×" in page.inner_text("#task-info")
    page.screenshot(path=shots / "01-loaded.png")


def test_deblur_upload_restore_compare_download(open_page, server: Server, image_file, shots: Path, tmp_path: Path):
    page = open_page()
    src = image_file(48, 40, "street.png")
    choose(page, "deblur", src)
    assert "48 × 40 px" in page.inner_text("#image-info")
    page.screenshot(path=shots / "02-deblur-picked.png")

    request = restore(page)
    query = parse_qs(urlparse(request.url).query)
    assert urlparse(request.url).path.endswith("/restore/deblur")
    assert "format" not in query  # "Automatic": the server's default (PNG for a PNG input)
    assert request.headers["authorization"] == f"Bearer {server.api_key}"
    sent = sent_form(page)
    assert set(sent) == {"image"}
    assert sent["image"]["bytes"] == src.read_bytes()  # the user's file goes as-is
    assert sent["image"]["filename"] == "street.png"

    # the after image has the input's size; the before canvas is drawn at the same scale
    assert page.get_attribute("#result", "data-width") == "48"
    assert page.get_attribute("#result", "data-height") == "40"
    natural = page.eval_on_selector("#after-img", "i => [i.naturalWidth, i.naturalHeight]")
    assert natural == [48, 40]
    assert page.eval_on_selector("#before-canvas", "c => [c.width, c.height]") == [48, 40]
    box_after = page.locator("#after-img").bounding_box()
    box_before = page.locator("#before-canvas").bounding_box()
    assert box_after == box_before
    timing = page.inner_text("#timing")
    for metric in ("decode", "queue", "inference", "encode"):
        assert metric in timing
    assert "round trip" in timing

    # the divider reveals the before image from the left; it is keyboard operable
    slider = page.get_by_label("Divider")
    slider.focus()
    page.keyboard.press("End")
    assert page.eval_on_selector("#before-canvas", "c => c.style.clipPath") == "inset(0px 0% 0px 0px)"
    page.keyboard.press("Home")
    assert page.eval_on_selector("#before-canvas", "c => c.style.clipPath") == "inset(0px 100% 0px 0px)"
    slider.fill("50")
    page.screenshot(path=shots / "03-deblur-result.png", full_page=True)

    name, path = download(page, tmp_path)
    assert name == "street-deblur.png"
    out = pixels(path)
    assert out.shape == (40, 48, 3)
    assert np.abs(out - pixels(src)).mean() > 1.0, "the restored image should differ from the input"

    page.get_by_role("button", name="Zoom 1:1").click()
    dpr = page.evaluate("devicePixelRatio")
    assert page.locator("#compare-stage").bounding_box()["width"] == pytest.approx(48 / dpr, abs=0.5)
    page.screenshot(path=shots / "03-deblur-zoom-1to1.png", full_page=True)
    page.get_by_role("button", name="Fit to view").click()


def test_sr_x4_before_is_upscaled_honestly(open_page, server: Server, image_file, shots: Path, tmp_path: Path):
    page = open_page()
    src = image_file(24, 20, "tiny.png", seed=3)
    choose(page, "sr-x4", src)
    assert "→ 96 × 80 px" in page.inner_text("#image-info")
    restore(page)
    assert page.eval_on_selector("#after-img", "i => [i.naturalWidth, i.naturalHeight]") == [96, 80]
    assert page.eval_on_selector("#before-canvas", "c => [c.width, c.height]") == [96, 80]

    read_before = """c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"""
    src_img = Image.open(src).convert("RGB")
    page.get_by_label("Input upscaled with").select_option("nearest")
    before = np.array(page.eval_on_selector("#before-canvas", read_before)).reshape(80, 96, 4)[..., :3]
    nearest = np.asarray(src_img.resize((96, 80), Image.NEAREST))
    assert np.array_equal(before, nearest)
    page.get_by_label("Input upscaled with").select_option("bicubic")
    before = np.array(page.eval_on_selector("#before-canvas", read_before)).reshape(80, 96, 4)[..., :3]
    bicubic = np.asarray(src_img.resize((96, 80), Image.BICUBIC)).astype(np.int16)
    assert np.abs(before - bicubic).max() <= 2  # the page's own Keys cubic, like PIL's
    page.screenshot(path=shots / "04-sr-x4-result.png", full_page=True)

    name, path = download(page, tmp_path)
    assert name == "tiny-sr-x4.png"
    assert Image.open(path).size == (96, 80)


def test_inpaint_paint_stroke_restore(open_page, server: Server, image_file, shots: Path, tmp_path: Path):
    page = open_page()
    w, h = 64, 48
    src = image_file(w, h, "wall.png", seed=5)
    choose(page, "inpaint", src)
    restore_button = page.get_by_role("button", name="Restore")
    assert restore_button.is_disabled()  # nothing painted yet
    page.get_by_role("slider", name="Brush size").fill("5")

    canvas = page.locator("#mask-canvas")
    assert canvas.evaluate("c => [c.width, c.height]") == [w, h]
    box = canvas.bounding_box()

    def at(x: float, y: float) -> tuple[float, float]:
        return box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h

    def stroke(x0: float, y0: float, x1: float, y1: float) -> None:
        page.mouse.move(*at(x0, y0))
        page.mouse.down()
        page.mouse.move(*at(x1, y1), steps=8)
        page.mouse.up()

    hole_pixels = (
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"
    )

    # undo and clear
    stroke(10, 10, 20, 10)
    assert canvas.evaluate(hole_pixels) > 0
    page.get_by_role("button", name="Undo").click()
    assert canvas.evaluate(hole_pixels) == 0
    assert restore_button.is_disabled()
    stroke(10, 40, 20, 40)
    page.get_by_role("button", name="Clear").click()
    assert canvas.evaluate(hole_pixels) == 0

    # the stroke that is sent, then the eraser takes its right end back off
    stroke(16, 24, 48, 24)
    painted = canvas.evaluate(hole_pixels)
    page.get_by_role("button", name="Eraser").click()
    stroke(46, 24, 50, 24)
    erased = canvas.evaluate(hole_pixels)
    assert 0 < erased < painted
    page.get_by_role("button", name="Brush").click()
    assert restore_button.is_enabled()
    page.screenshot(path=shots / "05-inpaint-painted.png", full_page=True)

    restore(page)
    sent = sent_form(page)
    assert set(sent) == {"image", "mask"}
    assert sent["image"]["bytes"] == src.read_bytes()
    mask_img = Image.open(io.BytesIO(sent["mask"]["bytes"]))
    assert mask_img.size == (w, h)  # at the image's own resolution
    mask = np.asarray(mask_img.convert("L"))
    assert set(np.unique(mask)) <= {0, 255}
    ys, xs = np.nonzero(mask)
    assert ys.min() >= 20 and ys.max() <= 28, (ys.min(), ys.max())
    assert xs.min() >= 12 and xs.max() <= 46, (xs.min(), xs.max())
    assert (mask == 255).sum() == erased

    page.screenshot(path=shots / "06-inpaint-result.png", full_page=True)
    name, path = download(page, tmp_path)
    assert name == "wall-inpaint.png"
    out, inp = pixels(path), pixels(src)
    assert out.shape == inp.shape
    hole = mask == 255
    assert np.abs(out - inp)[hole].mean() > 1.0, "the painted region should change"
    far = np.ones_like(hole)
    margin = 6
    far[max(ys.min() - margin, 0) : ys.max() + margin + 1, max(xs.min() - margin, 0) : xs.max() + margin + 1] = False
    assert np.abs(out - inp)[far].max() <= 1, "pixels far from the stroke should not change"


def test_mask_upload_is_resized_to_the_image(open_page, server: Server, image_file, shots: Path, tmp_path: Path):
    page = open_page()
    src = image_file(40, 30, "photo.png")
    choose(page, "inpaint", src)
    big = np.zeros((60, 80), np.uint8)  # twice the image's size: resized to it on upload
    big[20:40, 20:60] = 255
    mask_path = tmp_path / "mask.png"
    Image.fromarray(big).save(mask_path)
    page.get_by_label("Or upload a mask").set_input_files(mask_path)
    page.wait_for_function("!document.getElementById('restore').disabled")
    restore(page)
    mask = np.asarray(Image.open(io.BytesIO(sent_form(page)["mask"]["bytes"])).convert("L"))
    assert mask.shape == (30, 40)
    assert np.array_equal(mask, np.asarray(Image.fromarray(big).resize((40, 30), Image.NEAREST)))
    page.screenshot(path=shots / "10-inpaint-mask-uploaded.png", full_page=True)


def test_unsupported_file_shows_the_api_message(open_page, server: Server, shots: Path, tmp_path: Path):
    page = open_page()
    bogus = tmp_path / "notes.txt"
    bogus.write_bytes(b"these are notes, not pixels\n" * 4)
    choose(page, "deblur", bogus)
    assert "cannot show this file" in page.inner_text("#image-info")
    restore(page, expect="error")

    api = server.post("deblur", {"image": ("notes.txt", bogus.read_bytes(), "text/plain")}, format="png")
    assert api.status_code >= 400
    body = api.json()
    shown = page.locator("#error")
    assert shown.is_visible()
    assert body["message"] in shown.inner_text()
    assert body["code"] in shown.inner_text()
    page.screenshot(path=shots / "07-error-unsupported.png", full_page=True)


def test_wrong_api_key_shows_the_api_message_and_key_stays_in_memory(open_page, server: Server, image_file, shots):
    page = open_page(key=False)
    page.locator("details.options summary").click()
    page.get_by_label("API key").fill("not-the-key")
    choose(page, "deblur", image_file(16, 16))
    restore(page, expect="error")
    wrong = Server(server.url, "not-the-key")
    api = wrong.post("deblur", {"image": ("x.png", image_file(16, 16, "x.png").read_bytes(), "image/png")})
    assert api.status_code == 401
    assert api.json()["message"] in page.inner_text("#error")
    assert page.evaluate("document.activeElement.id") == "api-key"  # a 401 takes you to the key field
    page.screenshot(path=shots / "11-wrong-api-key.png", full_page=True)
    stored = page.evaluate("() => [localStorage.length, sessionStorage.length, document.cookie, location.href]")
    assert stored[:3] == [0, 0, ""]
    assert "not-the-key" not in stored[3]


def test_client_side_limits_use_the_servers_numbers(open_page, server: Server, image_file, shots: Path):
    page = open_page()
    sent = []
    page.on("request", lambda r: sent.append(r.url) if "/restore/" in r.url else None)
    side = int(MAX_INPUT_PIXELS**0.5) + 8  # over the input pixel cap
    restore = page.get_by_role("button", name="Restore")
    choose(page, "deblur", image_file(side, side, "huge.png"))
    # expect() waits: the page reads a chosen file asynchronously, and `choose` returns as soon as the
    # info line has any text, which for the second file below is still the first file's
    expect(page.locator("#image-info")).to_contain_text("at most")
    expect(restore).to_be_disabled()
    page.screenshot(path=shots / "08-limit-refused.png", full_page=True)

    # fine for deblur, but its 4x output is over the output cap
    side = int((MAX_OUTPUT_PIXELS / 16) ** 0.5) + 4
    choose(page, "deblur", image_file(side, side, "medium.png"))
    expect(restore).to_be_enabled()
    page.get_by_label("Task").select_option("sr-x4")
    expect(page.locator("#image-info")).to_contain_text("output")
    expect(restore).to_be_disabled()
    assert not sent, "nothing the server would refuse should be uploaded"


def test_phone_viewport_keyboard_only(open_page, server: Server, image_file, shots: Path):
    page = open_page(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 390

    # every control has an accessible name
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input, select, button, textarea, canvas[tabindex]')]
              .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                         && !el.getAttribute('aria-labelledby') && !el.textContent.trim())
              .map(el => el.id || el.outerHTML)"""
    )
    assert not unnamed, unnamed

    # keyboard only: tab to the task picker, pick deblur, give the file, restore with Enter
    page.locator("#task").focus()
    page.keyboard.press("Home")  # options ordered as the server lists them; select deblur by keys
    for _ in range(5):
        if page.eval_on_selector("#task", "s => s.value") == "deblur":
            break
        page.keyboard.press("ArrowDown")
    assert page.eval_on_selector("#task", "s => s.value") == "deblur"
    page.locator("#image-input").set_input_files(image_file(32, 24, "phone.png"))
    page.wait_for_function("!document.getElementById('restore').disabled")
    page.locator("#restore").focus()
    with page.expect_response("**/restore/**"):
        page.keyboard.press("Enter")
    page.wait_for_selector("body[data-state=done]")
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 390
    result = page.locator("#compare-stage").bounding_box()
    assert result["width"] <= 390
    page.screenshot(path=shots / "09-phone-result.png", full_page=True)


def test_progress_state_and_cancel(open_page, server: Server, image_file, shots: Path):
    page = open_page()
    held = []
    page.route("**/restore/**", lambda route: held.append(route))  # held: the page stays in progress
    choose(page, "deblur", image_file(32, 24, "slow.png"))
    page.get_by_role("button", name="Restore").click()
    page.wait_for_selector("body[data-state=busy]")
    assert page.locator("#progress").is_visible()
    assert page.locator("#form").get_attribute("aria-busy") == "true"
    assert page.get_by_role("button", name="Restoring…").is_disabled()
    page.wait_for_function(
        "/(Uploading|Restoring on the server)… \\d+\\.\\d s/.test(document.getElementById('status').textContent)"
    )
    page.screenshot(path=shots / "12-progress.png", full_page=True)

    page.get_by_role("button", name="Cancel").click()
    page.wait_for_selector("body[data-state=idle]")
    assert "Cancelled" in page.inner_text("#status")
    assert page.locator("#progress").is_hidden()
    for route in held:
        with contextlib.suppress(Exception):
            route.abort()
    page.unroute("**/restore/**")
    restore(page)  # and the next try goes through
    assert page.get_attribute("#result", "data-width") == "32"


def test_exif_rotated_jpeg_mask_follows_the_displayed_orientation(open_page, server: Server, tmp_path: Path):
    page = open_page()
    stored = Image.fromarray(make_image(40, 24, seed=9))  # stored landscape, shown portrait (EXIF 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    stored.save(path, quality=95, exif=exif)
    choose(page, "inpaint", path)
    assert "24 × 40 px" in page.inner_text("#image-info")
    assert page.locator("#mask-canvas").evaluate("c => [c.width, c.height]") == [24, 40]
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    restore(page)  # the server applies EXIF orientation too, so the mask's size matches
    assert (page.get_attribute("#result", "data-width"), page.get_attribute("#result", "data-height")) == ("24", "40")
    assert page.get_attribute("#download", "download") == "portrait-inpaint.jpg"  # JPEG in, JPEG out by default


def test_phone_touch_painting(open_page, server: Server, image_file, shots: Path):
    page = open_page(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    choose(page, "inpaint", image_file(48, 64, "tall.png"))
    canvas = page.locator("#mask-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box["width"] <= 390
    page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("!document.getElementById('restore').disabled")  # a tap paints a dot
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 390
    page.screenshot(path=shots / "13-phone-painting.png", full_page=True)
    restore(page)


def test_mask_can_be_painted_with_the_keyboard(open_page, server: Server, image_file, shots: Path):
    page = open_page()
    choose(page, "inpaint", image_file(40, 32, "keys.png"))
    holes = (
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] === 255; return n; }"
    )
    canvas = page.locator("#mask-canvas")
    canvas.focus()
    page.keyboard.press("Space")
    dot = canvas.evaluate(holes)
    assert dot > 0
    for _ in range(3):
        page.keyboard.press("Shift+ArrowRight")
    line = canvas.evaluate(holes)
    assert line > dot
    page.keyboard.press("Control+z")
    assert dot <= canvas.evaluate(holes) < line
    page.keyboard.press("e")
    assert page.get_by_role("button", name="Eraser").get_attribute("aria-pressed") == "true"
    page.keyboard.press("e")
    page.screenshot(path=shots / "14-keyboard-painting.png", full_page=True)
    page.locator("#restore").focus()
    with page.expect_response("**/restore/**"):
        page.keyboard.press("Enter")
    page.wait_for_selector("body[data-state=done]")


def test_image_by_drop_and_by_paste(open_page, server: Server, image_file):
    page = open_page()
    page.get_by_label("Task").select_option("deblur")
    data = list(image_file(30, 20, "dropped.png").read_bytes())
    make_file = "(bytes, name) => new File([new Uint8Array(bytes)], name, { type: 'image/png' })"
    page.evaluate(
        f"""([bytes]) => {{
            const dt = new DataTransfer();
            dt.items.add(({make_file})(bytes, 'dropped.png'));
            const drop = new DragEvent('drop', {{ dataTransfer: dt, bubbles: true }});
            document.getElementById('dropzone').dispatchEvent(drop);
        }}""",
        [data],
    )
    page.wait_for_function("document.getElementById('image-info').textContent.includes('30 × 20 px')")
    assert "dropped.png" in page.inner_text("#image-info")

    data = list(image_file(18, 12, "clip.png").read_bytes())
    page.evaluate(
        f"""([bytes]) => {{
            const dt = new DataTransfer();
            dt.items.add(({make_file})(bytes, 'image.png'));
            document.dispatchEvent(new ClipboardEvent('paste', {{ clipboardData: dt, bubbles: true }}));
        }}""",
        [data],
    )
    page.wait_for_function("document.getElementById('image-info').textContent.includes('18 × 12 px')")
    restore(page)
    assert page.get_attribute("#download", "download") == "image-deblur.png"


def test_output_format_quality_and_seed_are_sent(open_page, server: Server, image_file, tmp_path: Path):
    page = open_page()  # the options panel is open
    choose(page, "deblur", image_file(20, 16, "opts.png"))
    page.get_by_label("Output format").select_option("webp")
    page.get_by_label("Quality").fill("80")
    page.get_by_label("Seed").fill("7")
    request = restore(page)
    query = parse_qs(urlparse(request.url).query)
    assert (query["format"], query["quality"], query["seed"]) == (["webp"], ["80"], ["7"])
    name, path = download(page, tmp_path)
    assert name == "opts-deblur-seed7.webp"
    assert Image.open(path).format == "WEBP"

    page.get_by_label("Seed").fill("-1")  # the server's validation message is what the page shows
    restore(page, expect="error")
    assert "seed" in page.inner_text("#error")
