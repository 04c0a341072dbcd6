"""Model: what is served, load another (preset, folder, Hub id), push the live one to the Hub."""

from __future__ import annotations

import html

import gradio as gr

from .common import handler, tab_message


def model_header(info: dict) -> str:
    """The page's model line, and a banner whenever the served model cannot give meaningful
    answers (`limits`), saying what is missing and how to get it. Everything escaped."""
    line = (f"<p id='model-line'>Model: <code>{html.escape(str(info['source']))}</code> "
            f"({html.escape(str(info['note']))})</p>")
    if info.get("capabilities"):
        line += f"<p class='model-capabilities'>{html.escape(str(info['capabilities']))}</p>"
    limits = info.get("limits") or []
    if not limits:
        return line
    *missing, how = limits
    items = "".join(f"<li>{html.escape(m)}</li>" for m in missing)
    return (f"{line}<div id='honesty-banner' role='alert'><b>⚠️ This model cannot give meaningful answers "
            f"yet.</b><ul>{items}</ul><p>{html.escape(how)}</p></div>")


def build(ep: dict) -> dict:
    info = gr.JSON(label="Loaded model")
    with gr.Row():
        source = gr.Textbox(label="Load a model: preset (offline, tiny, coco-clip), folder or Hub id")
        load = gr.Button("Load")
    with gr.Row():
        repo = gr.Textbox(label="Push to Hub repo")
        token = gr.Textbox(label="Token (or set HF_TOKEN; never stored)", type="password")
        private = gr.Checkbox(True, label="Private")
        push = gr.Button("Push")
    msg = tab_message("model-msg")
    push.click(handler(ep["push_to_hub"], present=lambda url: f"pushed: {url}"), [repo, token, private], msg,
               api_name="push_to_hub", show_progress_on=msg)
    return {"info": info, "source": source, "load": load, "msg": msg}
