"""Assign: which proposal each image-label rule trains (Detic's max-size and its ablations)."""

from __future__ import annotations

import gradio as gr

from detector.annotate import RULE_COLOURS

from .common import handler, image_input, png_file, tab_message

COLUMNS = ["rule", "proposal", "rank (by objectness)", "% of image", "box", "labels"]


def build(ep: dict, defaults) -> None:
    """`defaults`: the served model's DetectorConfig (how many proposals training considers)."""
    considered = defaults.image_label_num_proposals
    legend = ", ".join(f"<span style='color:{c.as_hex()}'>■ {rule}</span>" for rule, c in RULE_COLOURS.items())
    gr.Markdown(f"Which proposal does an image-level tag train? Grey: top proposals. {legend} "
                "(max_size is Detic's default).")
    with gr.Row():
        with gr.Column():
            image = image_input(label="Image", type="filepath", elem_id="assign-image")
            tags = gr.Textbox(label="Image-level tags", value="person")
            vocab = gr.Textbox(label="Vocabulary (optional; defaults to the tags)")
            props = gr.Slider(5, 300, value=considered, step=1, elem_id="assign-considered",
                              label=f"Proposals considered (training considers {considered})")
            shown = gr.Slider(0, 300, value=50, step=1, label="Proposals drawn (grey; chosen ones are always drawn)")
            btn = gr.Button("Show assignment", variant="primary")
            msg = tab_message("assign-msg")
        with gr.Column():
            out = gr.Image(label="Assignment", format="png")
            table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="assign-table")

    def need_image(image, tags, vocab, props, shown):
        if image is None:
            raise gr.Error("upload an image first")
        return image, tags, vocab or None, int(props), int(shown)

    def present(result) -> tuple:
        drawing, rows = result
        said = "; ".join(f"{r[0]} trains proposal {r[2]} ({r[3]}% of the image)" if r[2] != "—" else
                         f"{r[0]} trains the whole image" for r in rows)
        return png_file(drawing), rows, said

    run = handler(ep["assign"], prepare=need_image, present=present)
    inputs, outputs = [image, tags, vocab, props, shown], [out, table, msg]
    btn.click(run, inputs, outputs, api_name="assign", show_progress_on=msg)
    # Enter in a text box, or a slider released / a number typed and Enter pressed, shows it again.
    for box in (tags, vocab):
        box.submit(run, inputs, outputs, api_name=False, show_progress_on=msg)
    for slider in (props, shown):
        slider.release(run, inputs, outputs, api_name=False, show_progress_on=msg)
