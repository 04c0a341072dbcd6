"""A person's path through the real UI in headless Chromium (Debian's, driven by Playwright):
detect with a typed vocabulary, inspect the max-size assignment, tag an image, and see the Dataset
tab reflect it without a reload. Screenshots go to a temporary folder, or to $SCREENSHOTS_DIR
(`make screenshots` refreshes the README's pictures)."""

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.service import AppService
from app.ui import build_app, launch_options
from detector import Predictor

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.mark.slow
def test_detect_and_tag_in_a_real_browser(tmp_path, small_image):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is needed: apt-get install chromium (see .ci/run)"
    service = AppService(tmp_path / "data", predictor=Predictor.from_pretrained("tiny", device="cpu"))
    demo = build_app(service)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **launch_options())
    photo = tmp_path / "astronaut.png"
    Image.fromarray(np.asarray(Image.fromarray(small_image).resize((256, 256)))).save(photo)
    SHOTS = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path / "screenshots")
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            expect(page.locator("#detect-button")).to_be_visible(timeout=60_000)

            # Detect: upload, type a vocabulary, click Detect, see boxes and a table.
            page.locator("#detect-image input[type=file]").set_input_files(str(photo))
            vocab = page.locator("#vocabulary textarea")
            vocab.fill("person, flag")
            page.locator("#detect-button").click()
            expect(page.locator("#detect-output img")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("flag").first).to_be_visible()
            page.screenshot(path=str(SHOTS / "detect.png"), full_page=True)

            # Assign: the proposal each image-label rule would train, drawn and tabulated.
            page.get_by_role("tab", name="Assign").click()
            page.locator("#assign-image input[type=file]").set_input_files(str(photo))
            page.get_by_role("button", name="Show assignment").click()
            table = page.locator("#assign-table")
            expect(table).to_contain_text("whole image", timeout=60_000)
            expect(table).to_contain_text("max_size")
            expect(table).to_contain_text("max_score")
            page.screenshot(path=str(SHOTS / "assign.png"), full_page=True)

            # Tag: upload an image, type a tag, press Enter: it is saved at once.
            page.get_by_role("tab", name="Tag").click()
            page.locator("#tag-upload input[type=file]").set_input_files(str(photo))
            expect(page.locator("#tag-status")).to_contain_text("Image 1 / 1", timeout=60_000)
            tag_input = page.locator("#tag-positives input")
            tag_input.fill("astronaut")
            tag_input.press("Enter")
            for _ in range(100):
                if service.store.counts().get("astronaut", {}).get("positive") == 1:
                    break
                page.wait_for_timeout(100)
            assert service.store.counts()["astronaut"]["positive"] == 1
            expect(page.locator("#tag-status")).to_contain_text("tagged 1 / 1", timeout=30_000)
            page.screenshot(path=str(SHOTS / "tag.png"), full_page=True)

            # Another tab shows the tag at once (it refreshes when opened).
            page.get_by_role("tab", name="Dataset").click()
            expect(page.get_by_text("1 image, 1 tagged, 1 label")).to_be_visible(timeout=30_000)

            # A reload loses nothing: the tag is still there.
            page.reload(wait_until="load")
            page.get_by_role("tab", name="Tag").click()
            expect(page.locator("#tag-status")).to_contain_text("tagged 1 / 1", timeout=30_000)
            browser.close()
    finally:
        demo.close()
