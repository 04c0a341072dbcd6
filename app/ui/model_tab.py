"""Model: what is served, load another (preset, folder, Hub id), push the live one to the Hub."""

from __future__ import annotations

import gradio as gr

from .common import handler


def model_line(info: dict) -> str:
    line = f"Model: `{info['source']}` ({info['note']})"
    if info.get("capabilities"):  # what this model can and cannot recognise, said up front
        line += f"  \n{info['capabilities']}"
    return line


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
    msg = gr.Markdown()
    push.click(handler(ep["push_to_hub"], present=lambda url: f"pushed: {url}"), [repo, token, private], msg,
               api_name="push_to_hub")
    return {"info": info, "source": source, "load": load, "msg": msg}
