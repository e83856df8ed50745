"""End to end, in headless Chromium: the explorer served by Voila (with an image model and with the VQA model and a
typed question) and notebook 00's explorer in JupyterLab.

Each test changes a control as a reader would and asserts that the rendered map (a PNG in the page) changed
pixel for pixel, that bad input is answered by a message in the page, that the browser console shows no error,
and that no request leaves the loopback interface. Screenshots go to ``results/screenshots/``. Without Chromium
these tests are skipped (or fail where ``LIFTCAM_REQUIRE_BROWSER=1``: see ``browser_servers.check_chromium``);
the explorer server's websocket limit is checked without a browser.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import json
import re
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from browser_servers import REPO, Watched, jupyter_lab, status, voila
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import serialize_binary_message
from PIL import Image
from tornado.websocket import websocket_connect

from liftcam_utils.app.uploads import MAX_PIXELS

pytestmark = pytest.mark.e2e
WAIT_MS = 240_000  # one redraw is seconds on a free 2-core CPU; shared CPUs can make it minutes
MAP = ".liftcam-explanation img"


def rendered_map(page) -> np.ndarray:
    """The pixels of the figure (map over the image, bar chart, ...) the page shows now."""
    source = page.locator(MAP).first.get_attribute("src")
    assert source.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).convert("RGB"))


def change_and_wait_for_new_map(page, change) -> tuple[np.ndarray, np.ndarray]:
    """The map before and after ``change()``: waits until the page shows a different PNG."""
    page.locator(MAP).first.wait_for(state="attached", timeout=WAIT_MS)
    before_source = page.locator(MAP).first.get_attribute("src")
    before = rendered_map(page)
    change()
    page.wait_for_function("([selector, old]) => { const image = document.querySelector(selector);"
                           " return image !== null && image.src !== old; }",
                           arg=[MAP, before_source], timeout=WAIT_MS)
    return before, rendered_map(page)


def assert_changed(before: np.ndarray, after: np.ndarray) -> None:
    """The map itself changed: over 1% of the pixels differ in the figure's top-left corner, which the map over
    the image fills (its first panel; the figures are cropped tightly, so the corner stays put)."""
    height = min(before.shape[0], after.shape[0])
    width = int(0.15 * min(before.shape[1], after.shape[1]))
    corner = (slice(0, height), slice(0, width))
    changed = np.abs(before[corner].astype(int) - after[corner].astype(int)).max(axis=-1) > 0
    assert changed.mean() > 0.01, f"only {changed.mean():.2%} of the map's pixels changed"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def choose_files(page, files) -> None:
    """Choose ``files`` (what Playwright's ``FileChooser.set_files`` takes) in the explorer's upload button's file
    dialog."""
    with page.expect_file_chooser(timeout=WAIT_MS) as chooser:
        page.locator(".liftcam-upload").click()
    chooser.value.set_files(files)


def upload(page, name: str, content: bytes) -> None:
    """Choose a file ``name`` holding ``content`` in the explorer's upload button's file dialog."""
    choose_files(page, [{"name": name, "mimeType": "application/octet-stream", "buffer": content}])


def sparse_file(path: Path, size: int) -> Path:
    """A file of ``size`` zero bytes that takes no room on disk nor in memory."""
    with open(path, "wb") as file:
        file.truncate(size)
    return path


def explorer_settings():
    """The explorer's Voila settings (apps/jupyter/config/voila.py), as Voila loads them."""
    from traitlets.config.loader import PyFileConfigLoader

    return PyFileConfigLoader("voila.py", path=str(REPO / "apps" / "jupyter" / "config")).load_config()


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("voila")
    server = voila(folder, REPO / "apps" / "explorer.ipynb")
    try:
        yield server.start(server.base + "/login")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jupyterlab")
    root = folder / "root"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "notebooks" / "00_quickstart.ipynb", root / "notebooks")  # JupyterLab may save its copy
    server = jupyter_lab(folder, root)
    try:
        yield server.start(server.url("/api/status"))
    finally:
        server.stop()


def test_explorer_in_voila(browser, explorer):
    assert status(explorer.base + "/") == 302, "Voila must send a reader without the token to its login page"
    watched = Watched(browser, height=1750)  # the whole app: Voila scrolls inside the page
    page = watched.page
    with watched.screenshot_on_failure("explorer_voila.png"):
        page.goto(explorer.url("/"), wait_until="commit", timeout=WAIT_MS)
        page.locator(MAP).first.wait_for(timeout=WAIT_MS)
        text = page.locator(".liftcam-explanation")
        assert "at _swish@1, target" in text.inner_text() and "insertion AUC" in text.inner_text()
        watched.screenshot("explorer_voila.png")

        before, after = change_and_wait_for_new_map(page, lambda: page.locator(".liftcam-method select")
                                                    .select_option("gradcam"))
        assert_changed(before, after)

        stepper = page.locator(".liftcam-stepper")
        stepper.get_by_role("button", name="next ordering").click()
        page.wait_for_function("() => document.querySelector('.liftcam-stepper').innerText.includes('orderings: 1 ')",
                               timeout=WAIT_MS)
        assert page.locator(".liftcam-stepper-layer input").input_value() == "_blocks.15._swish@0"
        assert "at _blocks.15._swish@0, 1152 maps, non-linear head" in stepper.inner_text()
        stepper.locator("img").first.wait_for(timeout=WAIT_MS)
        watched.screenshot("explorer_shapcam_step.png")

        messages = page.locator(".liftcam-messages")
        upload(page, "notes.txt", b"not an image")
        messages.get_by_text("'notes.txt' is not an image").wait_for(timeout=WAIT_MS)
        watched.screenshot("explorer_bad_upload.png")
        upload(page, "huge.png", png_bytes(Image.new("RGB", (9000, 1000))))
        messages.get_by_text("'huge.png' is 9000 x 1000 pixels").wait_for(timeout=WAIT_MS)

        gray = Image.fromarray(np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1)))
        before, after = change_and_wait_for_new_map(page, lambda: upload(page, "gray.png", png_bytes(gray)))
        assert_changed(before, after)
        assert "grayscale image (mode L) converted to RGB" in messages.inner_text()
        assert "upload: gray.png at _swish@1" in text.inner_text()

        layer = page.locator(".liftcam-layer input")
        layer.fill("no_such_layer")
        layer.press("Enter")
        text.get_by_text("unknown layer 'no_such_layer'").wait_for(timeout=WAIT_MS)
        assert page.locator(MAP).count() == 0
        watched.screenshot("explorer_bad_layer.png")
        layer.fill("_blocks.15._swish@0")  # the app keeps running: a valid layer draws again
        layer.press("Enter")
        page.locator(MAP).first.wait_for(timeout=WAIT_MS)
        assert "upload: gray.png at _blocks.15._swish@0" in text.inner_text()
    assert watched.problems == []


def test_explorer_asks_the_vqa_model_in_voila(browser, explorer):
    """The VQA model shows a question box; a typed question redraws the map, a question with a word the model does
    not know gets its message, an example question fills the box, and an image-only model hides the box again."""
    watched = Watched(browser, height=1750)
    page = watched.page
    with watched.screenshot_on_failure("explorer_vqa.png"):
        page.goto(explorer.url("/"), wait_until="commit", timeout=WAIT_MS)
        page.locator(MAP).first.wait_for(timeout=WAIT_MS)
        row, text = page.locator(".liftcam-question-row"), page.locator(".liftcam-explanation")
        assert row.is_hidden(), "an image-only model shows no question box"
        change_and_wait_for_new_map(page, lambda: page.locator(".liftcam-model select").select_option("shapes_vqa"))
        row.wait_for(state="visible", timeout=WAIT_MS)
        box = page.locator(".liftcam-question input")
        assert f"question: {box.input_value()!r} -> the model answers " in text.inner_text()

        def ask(question: str):
            box.fill(question)
            box.press("Enter")

        before, after = change_and_wait_for_new_map(page, lambda: ask("how many objects are there?"))
        assert_changed(before, after)
        assert "question: 'how many objects are there?' -> the model answers " in text.inner_text()
        watched.screenshot("explorer_vqa.png")

        ask("what colour is the star?")
        text.get_by_text("does not know: 'colour'").wait_for(timeout=WAIT_MS)
        assert "its vocabulary: ?, a, are, blue" in text.inner_text() and page.locator(MAP).count() == 0
        watched.screenshot("explorer_vqa_bad_question.png")

        example = page.locator(".liftcam-examples select option").nth(1).inner_text()
        page.locator(".liftcam-examples select").select_option(index=1)  # the app keeps running
        page.locator(MAP).first.wait_for(timeout=WAIT_MS)
        asked = example.replace("\xa0", " ").rsplit(" (truth: ", 1)[0]  # the select renders spaces as U+00A0
        page.wait_for_function("([selector, value]) => document.querySelector(selector).value === value",
                               arg=[".liftcam-question input", asked], timeout=WAIT_MS)
        assert f"question: {asked!r}" in text.inner_text()

        page.locator(".liftcam-model select").select_option("efficientnet_lite0")
        row.wait_for(state="hidden", timeout=WAIT_MS)
        page.locator(MAP).first.wait_for(timeout=WAIT_MS)
    assert watched.problems == []


def test_explorer_refuses_a_file_over_the_upload_limit_in_the_page(browser, explorer, tmp_path):
    """A file over the upload limit of apps/jupyter/config/voila.py, and over the server's websocket limit (which
    would close the kernel connection), is refused in the page with a message naming its size and the limit; the
    app keeps running: a small image is then drawn. A file of exactly the limit still reaches the kernel."""
    settings = explorer_settings()
    limit = settings.VoilaConfiguration.resources["max_upload_bytes"]
    websocket_limit = settings.Voila.tornado_settings["websocket_max_message_size"]
    assert 4 * MAX_PIXELS < limit < websocket_limit, "the limit must hold an uncompressed 20-megapixel RGBA image"
    assert limit % 2**20 == 0
    too_large = limit + 2**20  # Playwright gives a file by its path; a sparse one takes no room
    assert too_large > websocket_limit
    watched = Watched(browser, height=1750)
    page = watched.page
    with watched.screenshot_on_failure("explorer_upload_limit.png"):
        page.goto(explorer.url("/"), wait_until="commit", timeout=WAIT_MS)
        page.locator(MAP).first.wait_for(timeout=WAIT_MS)
        messages, refusal = page.locator(".liftcam-messages"), page.locator("#liftcam-upload-refused")

        choose_files(page, sparse_file(tmp_path / "at_limit.tif", limit))  # sent whole: the kernel reads it
        messages.get_by_text("'at_limit.tif' is not an image").wait_for(timeout=WAIT_MS)
        assert refusal.count() == 0

        choose_files(page, sparse_file(tmp_path / "photo.tif", too_large))
        refusal.wait_for(timeout=WAIT_MS)
        assert refusal.inner_text().startswith(f"'photo.tif' is {too_large / 2**20:.1f} MiB; the explorer takes "
                                               f"files up to {limit // 2**20} MiB: downscale it first")
        assert refusal.get_attribute("role") == "alert"
        watched.screenshot("explorer_upload_limit.png")

        gray = Image.fromarray(np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1)))
        before, after = change_and_wait_for_new_map(page, lambda: upload(page, "gray.png", png_bytes(gray)))
        assert_changed(before, after)  # the kernel connection is still open
        assert "upload: gray.png at _swish@1" in page.locator(".liftcam-explanation").inner_text()
        assert refusal.count() == 0, "an accepted file takes the refusal away"
    assert watched.problems == []


def test_quickstart_explorer_in_jupyterlab(browser, lab):
    assert status(lab.base + "/api/status") == 403, "JupyterLab must refuse a request without the token"
    watched = Watched(browser)
    page = watched.page
    with watched.screenshot_on_failure("quickstart_jupyterlab.png"):
        page.goto(lab.url("/lab/tree/notebooks/00_quickstart.ipynb"), wait_until="domcontentloaded",
                  timeout=WAIT_MS)
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=WAIT_MS)
        page.locator(".jp-StatusBar-TextItem", has_text="Python 3 (ipykernel) | Idle").first.wait_for(timeout=WAIT_MS)
        # run what the explorer cell needs, as a reader would: parameters, data, model (cells 1, 2, 4), then cell 13
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.keyboard.press("Escape")
        for _ in range(5):
            page.keyboard.press("Shift+Enter")
        for _ in range(8):
            page.keyboard.press("j")
        cell = page.locator(".jp-Notebook .jp-Cell.jp-mod-active")
        assert "method_explorer(net, records" in cell.locator(".jp-InputArea-editor").first.inner_text()
        page.keyboard.press("Control+Enter")
        # JupyterLab skips rendering cells out of view: wait for the map to exist, then look at it
        cell.locator(MAP).first.wait_for(state="attached", timeout=WAIT_MS)
        cell.locator(MAP).first.scroll_into_view_if_needed()
        before, after = change_and_wait_for_new_map(page, lambda: cell.locator(".liftcam-method select")
                                                    .select_option("gradcam"))
        assert_changed(before, after)
        assert cell.locator(".liftcam-method select").input_value() == "gradcam"
        cell.locator(MAP).first.scroll_into_view_if_needed()
        watched.screenshot("quickstart_jupyterlab.png")
    assert watched.problems == []


def test_explorer_takes_a_20_megapixel_upload(explorer):
    """The upload button sends a file to the kernel in one websocket message: a message the size of an uncompressed
    20-megapixel RGBA image (over Tornado's default limit of 10 MiB; apps/jupyter/config/voila.py raises it) reaches
    the kernel, which answers the request it carries, instead of closing the connection."""
    with urllib.request.urlopen(explorer.url("/"), timeout=WAIT_MS / 1000) as page:  # Voila starts a kernel
        kernel = re.search(r'"kernelId":\s*"([0-9a-f-]+)"', page.read().decode())[1]
    request = Session().msg("kernel_info_request")
    request.update(channel="shell", buffers=[bytes(4 * MAX_PIXELS + 1024)])

    async def answer() -> dict | None:
        address = explorer.url(f"/api/kernels/{kernel}/channels").replace("http://", "ws://")
        connection = await websocket_connect(address)
        try:
            await connection.write_message(serialize_binary_message(request), binary=True)
            while (message := await connection.read_message()) is not None:  # None: the server closed it
                reply = json.loads(message) if isinstance(message, str) else {}  # legacy protocol: text
                if reply.get("parent_header", {}).get("msg_id") == request["header"]["msg_id"] \
                        and reply["msg_type"] == "kernel_info_reply":
                    return reply
            return None
        finally:
            connection.close()

    # a thread of its own: Playwright's sync API (the other tests here) may leave an event loop running in this one
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        reply = pool.submit(asyncio.run, asyncio.wait_for(answer(), WAIT_MS / 1000)).result()
    assert reply is not None, "the server closed the kernel connection on a 20-megapixel message"
    assert reply["content"]["status"] == "ok"
