"""Assign: which proposal each image-label rule trains (Detic's max-size and its ablations)."""

from __future__ import annotations

import gradio as gr

from detector.annotate import RULE_COLOURS

from .common import ImageInput, handler, png_file, tab_message


def build(ep: dict) -> None:
    legend = ", ".join(f"<span style='color:{c.as_hex()}'>■ {rule}</span>" for rule, c in RULE_COLOURS.items())
    gr.Markdown(f"Which proposal does an image-level tag train? Grey: top proposals. {legend} "
                "(max_size is Detic's default).")
    with gr.Row():
        with gr.Column():
            image = ImageInput(label="Image", type="filepath", elem_id="assign-image")
            tags = gr.Textbox(label="Image-level tags", value="person")
            vocab = gr.Textbox(label="Vocabulary (optional; defaults to the tags)")
            props = gr.Slider(5, 300, value=50, step=1, label="Proposals shown")
            btn = gr.Button("Show assignment", variant="primary")
            msg = tab_message("assign-msg")
        with gr.Column():
            out = gr.Image(label="Assignment", format="png")
            table = gr.Dataframe(headers=["rule", "proposal", "box", "labels"], interactive=False,
                                 elem_id="assign-table")

    def need_image(image, tags, vocab, props):
        if image is None:
            raise gr.Error("upload an image first")
        return image, tags, vocab or None, int(props)

    btn.click(handler(ep["assign"], prepare=need_image, present=lambda r: (png_file(r[0]), r[1])),
              [image, tags, vocab, props], [out, table], api_name="assign", show_progress_on=msg)
