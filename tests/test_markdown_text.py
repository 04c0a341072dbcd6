"""User text inside the page's Markdown reads as typed: never an image the browser fetches, a link
or bold (`app.markdown`). A QA pass found a label named `![t](http://host/pixel.png)` drawn as an
image in every visitor's Tag tab (a tracking pixel on a public Space)."""

from __future__ import annotations

import html
import http.server
import shutil
import threading

import pytest
from markdown_it import MarkdownIt

from app.markdown import literal
from app.policy import AccessPolicy
from app.service import AppService
from app.ui import build_app
from app.ui.common import error_text, launch_options
from tests.test_security import _free_port, _png

HOSTILE = ["![t](http://127.0.0.1:9/p.png)", "**b** _i_ `c` [l](javascript:alert(1))", "<img src=x onerror=alert(1)>",
           "a & b", "# h", "1. x", "- y", "x\\y", "~~s~~", "http://a.b/c", "名前 🐱", "a|b", "<http://x.y>", "[x]: /u",
           "> q", "+ z", "2) x", "a\n- b\n===", "not-there.png",
           "see www.x.com", "a@b.c", "ftp://h/f"]


@pytest.mark.parametrize("text", HOSTILE)
def test_literal_text_renders_as_itself_in_commonmark(text):
    md = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    assert md.renderInline(literal(text)) == html.escape(text, quote=False)
    assert md.render(literal(text)) == f"<p>{html.escape(text, quote=False)}</p>\n"
    autolink = any(part in text for part in ("://", "www.", "@"))
    if not any(c in text for c in "\\`*_{}[]()#!|~\n") and not autolink and not text.startswith(("+", "-", "=", "2)", "1.")):
        assert literal(text) == html.escape(text, quote=False)  # nothing escaped that needs none (API text)


def test_error_lines_show_markdown_literally():
    assert "![" not in error_text("no label ![t](http://h/p.png)").replace("\\![", "")
    assert MarkdownIt("commonmark").renderInline(error_text("**x**")) == "⚠️ **x**"


class _Pixel(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 - the http.server name
        _Pixel.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        """Quiet: the test reads `hits`, not the server's log."""


@pytest.mark.slow
def test_a_markdown_label_and_file_name_load_nothing_in_a_real_browser(tmp_path, tiny_predictor):
    """A label and a file name holding Markdown are waited for as text in the Tag tab (key legend,
    status line, a message), the Dataset tab and a Load error; then: no image element for them, and
    the pixel server on loopback was never asked for anything."""
    from playwright.sync_api import expect, sync_playwright

    pixel = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pixel)
    threading.Thread(target=pixel.serve_forever, daemon=True).start()
    payload = f"![t](http://127.0.0.1:{pixel.server_address[1]}/pixel.png) **bold**"
    service = AppService(tmp_path / "data", predictor=tiny_predictor, policy=AccessPolicy())  # served publicly
    h = service.store.add_image(_png(tmp_path / "x.png", 10).read_bytes(), original_name=payload + ".png")
    service.tag(h, payload)
    demo = build_app(service)
    port = _free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_options())
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            page.get_by_role("tab", name="Tag").click()
            for where in ("#tag-keys", "#tag-status"):
                expect(page.locator(where)).to_contain_text(payload, timeout=60_000)
            page.get_by_role("tab", name="Dataset").click()
            expect(page.locator("#dataset-table")).to_contain_text(payload, timeout=60_000)
            page.get_by_role("tab", name="Model").click()
            page.get_by_label("Load a model").fill(payload)
            page.get_by_role("button", name="Load").click()
            expect(page.locator("#model-msg")).to_contain_text("pixel.png", timeout=60_000)  # the tab's line
            images = page.locator('img[src*="pixel.png"]').count()
            bold = page.locator("#tag-keys strong", has_text="bold").count()
            browser.close()
    finally:
        demo.close()
        pixel.shutdown()
    assert images == 0 and bold == 0
    assert _Pixel.hits == [], "the browser fetched the label's image"
