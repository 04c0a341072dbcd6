"""What every tab shares: page styling, the image input, and `handler`, which ties a UI event to
one app operation (an endpoint from `app.endpoints`) and shapes its result for the components."""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import gradio as gr
from PIL import Image

from detector.files import remove_older_than

from ..endpoints import USER_ERRORS, friendly
from ..markdown import IMAGE_POLICY, literal

CSS = """
.progress-outer {background:#e5e7eb;border-radius:6px;height:14px;width:100%}
.progress-inner {background:#4f46e5;border-radius:6px;height:14px}
#tag-image img {max-height: 460px; object-fit: contain}
.tab-message {min-height: 1.5em}
.hotkey {display: none !important}
#honesty-banner {background:#fef3c7;border:1px solid #f59e0b;border-radius:8px;padding:8px 12px;color:#78350f}
#honesty-banner ul {margin:4px 0 4px 18px}
.prose code {overflow-wrap: anywhere}
@media (hover: none) and (pointer: coarse) { #tag-keys {display: none} }  /* no keyboard on a touch phone */
"""

# The page's keyboard script: the Tag tab's labelling keys (`tag_tab.KEYBOARD_SCRIPT`), and Enter in a
# slider's number box (below). Assembled by `launch_options` into the page's head.
SLIDER_ENTER_SCRIPT = """\
// Enter in a slider's number box (a threshold typed on the Detect tab) commits it as leaving the
// box does: the slider's release event (which detects again there). The box keeps the focus.
document.addEventListener('keydown', (e) => {
  const t = e.target;
  if (e.key !== 'Enter' || t.tagName !== 'INPUT' || t.type !== 'number') return;
  if (!t.closest('.wrap')?.querySelector('input[type=range]')) return;
  e.preventDefault();
  t.blur();
  t.focus();
});
"""


def launch_options() -> dict:
    from .tag_tab import KEYBOARD_SCRIPT  # here, not at the top: tag_tab imports this module

    head = f"\n{IMAGE_POLICY}\n<script>\n{KEYBOARD_SCRIPT}{SLIDER_ENTER_SCRIPT}</script>\n"
    return {"theme": gr.themes.Soft(primary_hue="indigo"), "css": CSS, "head": head}


_API_INFO = re.compile(rb"window\.gradio_api_info = .*?</script>", re.DOTALL)
_NO_API_INFO = b'window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}};</script>'


class LoginOnly:
    """ASGI middleware: with a login (APP_USERNAME + APP_PASSWORD), a visitor who is not logged in
    gets the login page and nothing else. Gradio 6 answers `GET /` before the login with a page
    that embeds every endpoint's name and parameters (`window.gradio_api_info`); this empties it.
    Its other routes (/config, /gradio_api/info, the queue) already answer 401 then."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        gradio_app = scope.get("app")
        if (scope["type"] != "http" or scope.get("method") != "GET" or getattr(gradio_app, "auth", None) is None
                or self._logged_in(scope, gradio_app)):
            return await self.app(scope, receive, send)
        start, chunks = {}, []

        async def hold(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return None
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    body = b"".join(chunks)
                    headers = dict(start.get("headers") or [])
                    if headers.get(b"content-type", b"").startswith(b"text/html"):
                        body = _API_INFO.sub(_NO_API_INFO, body)
                    headers[b"content-length"] = str(len(body)).encode()
                    await send({**start, "headers": list(headers.items())})
                    await send({"type": "http.response.body", "body": body})
                return None
            return await send(message)

        await self.app(scope, receive, hold)

    @staticmethod
    def _logged_in(scope, gradio_app) -> bool:
        cookies = {}
        for name, value in scope.get("headers") or []:
            if name == b"cookie":
                for part in value.decode("latin-1").split(";"):
                    key, _, val = part.strip().partition("=")
                    cookies[key] = val
        cookie_id = getattr(gradio_app, "cookie_id", "")
        token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
        return bool(token) and getattr(gradio_app, "tokens", {}).get(token) is not None


def login_app_kwargs() -> dict:
    """`Blocks.launch(app_kwargs=...)` for a deployment with a login: see `LoginOnly`."""
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(LoginOnly)]}


def image_input(**kwargs) -> gr.Image:
    """An image input whose upload goes to `detector.images` untouched: one loader for every path
    (EXIF, odd modes, huge images, clear errors) and no second decode by Gradio.

    A `gr.Image` whose `preprocess` is replaced on the instance, not a subclass: Gradio's component
    metaclass writes a `.pyi` stub beside the module of every component class it creates (here
    app/ui/common.pyi, into the source tree, on every import)."""
    image = gr.Image(**kwargs)
    default = image.preprocess

    def preprocess(payload):
        if payload is not None and getattr(payload, "path", None):
            return str(payload.path)
        return default(payload)

    image.preprocess = preprocess
    return image


def tab_message(elem_id: str) -> gr.Markdown:
    """The one place a tab reports what happened: results, progress and errors. Events pass it as
    `show_progress_on`, so a failure marks this line, never the tab's outputs (which keep their
    values and stay usable)."""
    return gr.Markdown(elem_id=elem_id, elem_classes=["tab-message"])


def error_text(message: str) -> str:
    """An error for a tab's message line: shown literally (it may hold user text), marked as an error."""
    return f"⚠️ {literal(message)}"


def on_line(outputs: list, line) -> Callable:
    """An `error` for `handler`: every output as it was but the tab's message line `line`, which says
    why (a toast vanished in seconds and left a red "Error" badge beside the next success)."""
    def error(message: str, *_):
        updates = tuple(error_text(message) if o is line else gr.update() for o in outputs)
        return updates if len(updates) > 1 else updates[0]

    return error


def user_error(text: str) -> gr.Error:
    """An expected mistake (no image picked, nothing to undo): a toast or the tab's line, and no
    traceback in the server's log (Gradio prints one for every gr.Error unless told not to)."""
    return gr.Error(text, print_exception=False)


def handler(endpoint: Callable, present: Callable | None = None, prepare: Callable | None = None,
            error: Callable | None = None) -> Callable:
    """A UI event function: `prepare` maps the components' values to the endpoint's arguments
    (default: as they are), `present` maps its result to the output components' values.
    `error` (UI-only events): `error(text, *values)` maps an expected error to the outputs instead
    of raising, typically no-op updates plus the text in the tab's message line. Events that are also API
    endpoints leave it out, so API callers get the error as an error."""

    def run(*values):
        try:
            args = prepare(*values) if prepare else values
            result = endpoint(*args)
            return present(result) if present else result
        except (gr.Error, *USER_ERRORS) as e:
            if error is None:
                raise
            # `friendly` escaped a gr.Error's text for toasts; the message line escapes it itself (once)
            return error(html.unescape(e.message) if isinstance(e, gr.Error) else str(e), *values)

    run.__name__ = getattr(endpoint, "__name__", "handler")  # no __wrapped__: Gradio reads run's own signature
    wrapped = friendly(run)
    del wrapped.__wrapped__
    wrapped.endpoint = endpoint
    return wrapped


OUTPUTS = Path(tempfile.gettempdir()) / "ovd-outputs"
KEEP_OUTPUTS_S = 3600
PRUNE_EVERY_S = 60
_last_prune = 0.0


PREVIEWS = OUTPUTS / "previews"


def _prune_outputs() -> None:
    """Outputs and previews older than an hour are removed; at most once a minute (a directory scan
    per detect adds up)."""
    global _last_prune
    now = time.time()
    if now - _last_prune > PRUNE_EVERY_S:
        _last_prune = now
        remove_older_than(OUTPUTS, KEEP_OUTPUTS_S, keep=(PREVIEWS,))
        remove_older_than(PREVIEWS, KEEP_OUTPUTS_S)


def _output_path(suffix: str) -> Path:
    """A fresh, uniquely named file for one response. Unique names matter: Gradio caches returned
    arrays under a content hash, so identical concurrent requests rewrote one file while another
    response was streaming it. Files older than an hour are pruned."""
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    _prune_outputs()
    return OUTPUTS / f"{uuid.uuid4().hex}{suffix}"


def preview_file(ep: dict, image_hash: str, max_side: int = 1024) -> str:
    """A stored image's preview as a file, written once per image and size and then only read:
    returned as an array, Gradio rewrote one cache file per image on every event that showed it,
    while another page could still be downloading it ("Too much data for declared Content-Length")."""
    if not image_hash or any(ch not in "0123456789abcdef" for ch in image_hash):  # a SHA-256: never a path
        raise ValueError("unknown image")
    path = PREVIEWS / f"{image_hash}-{int(max_side)}.jpg"
    if path.exists():
        with contextlib.suppress(OSError):
            os.utime(path)  # in use: kept another hour
        return str(path)
    _prune_outputs()
    PREVIEWS.mkdir(parents=True, exist_ok=True)
    part = PREVIEWS / f".{uuid.uuid4().hex}.jpg"
    Image.fromarray(ep["image_preview"](image_hash, max_side)).save(part, quality=90)
    os.replace(part, path)  # complete or absent: a reader never sees half a file
    return str(path)


def download_name(text: str) -> str:
    """A file name a person recognises, from user text (an image's name): letters, digits, - _ ."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(str(text)).stem).strip(".-")
    return cleaned[:80] or "image"


def json_file(data, name: str, named_after: str | None = None) -> str:
    """A download for `data`, named `<named_after>-<name>.json` (e.g. after the image it is for) in
    a folder of its own, else `<unique>-<name>.json`."""
    if named_after:
        folder = _output_path("")
        folder.mkdir()
        path = folder / f"{download_name(named_after)}-{name}.json"
    else:
        path = _output_path(f"-{name}.json")
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    return str(path)


def png_file(array) -> str:
    """An image output as its own PNG file (see `_output_path`)."""
    path = _output_path(".png")
    Image.fromarray(array).save(path, compress_level=1)
    return str(path)
