"""Assign: which proposal each image-label rule trains (Detic's max-size and its ablations)."""

from __future__ import annotations

import gradio as gr

from detector.annotate import RULE_COLOURS

from ..markdown import literal
from .common import handler, image_input, png_file, tab_message, user_error

COLUMNS = ["rule", "labels", "proposal", "rank (by objectness)", "% of image", "box"]
ORDER = [0, 5, 1, 2, 3, 4]  # `AppService.assign`'s row -> COLUMNS (the labels early: never cut off)
LEGEND = ("**proposal**: a candidate box the model found in the image · **objectness**: how sure the model is "
          "that a proposal holds an object (proposals are ranked by it) · **rule**: how an image-level tag "
          "picks the one proposal it trains")


def default_tag(defaults) -> str:
    """A name the served model recognises: the first it was trained on, else "cat" (every model's
    region scores know it: CLIP and the offline ImageNet scorer alike)."""
    return (list(getattr(defaults, "trained_class_names", None) or []) or ["cat"])[0]


def _found(rows: list) -> int | None:
    """How many proposals the image has among those considered (from the rank column, "k of n")."""
    ranks = [str(r[2]) for r in rows if " of " in str(r[2])]
    return int(ranks[0].rsplit(" of ", 1)[1]) if ranks else None


def summary(rows: list, considered: int) -> str:
    """One line: how many proposals exist vs how many were considered, and what each rule trains."""
    found = _found(rows)
    if found is None:
        head = f"Up to {considered} proposals considered"
    elif found < considered:
        head = f"This image has {found} proposals, fewer than the {considered} considered: all {found} are candidates"
    else:
        head = f"The top {found} proposals (by objectness) are considered"
    said = "; ".join((f"{r[0]} trains the proposal ranked {r[2]} ({r[3]}% of the image)" if r[2] != "—" else
                      f"{r[0]} trains the whole image") + (f" for {literal(r[5])}" if len(r) > 5 and r[5] else "") for r in rows)
    return f"{head}. {said}" if said else f"{head}."


def build(ep: dict, defaults) -> None:
    """`defaults`: the served model's DetectorConfig (how many proposals training considers)."""
    considered = defaults.image_label_num_proposals
    legend = ", ".join(f"<span style='color:{c.as_hex()}'>■ {rule}</span>" for rule, c in RULE_COLOURS.items())
    gr.Markdown(f"Which proposal does an image-level tag train? Grey: top proposals. {legend} "
                "(max_size is Detic's default; the whole image is drawn just inside the border).")
    gr.Markdown(LEGEND, elem_id="assign-legend")
    with gr.Row():
        with gr.Column():
            image = image_input(label="Image", type="filepath", elem_id="assign-image")
            tags = gr.Textbox(label="Image-level tags", value=default_tag(defaults), elem_id="assign-tags")
            vocab = gr.Textbox(label="Vocabulary (optional; defaults to the tags)")
            props = gr.Slider(5, 300, value=considered, step=1, elem_id="assign-considered",
                              label=f"Proposals considered (training considers {considered})")
            shown = gr.Slider(0, 300, value=50, step=1, label="Proposals drawn (grey; chosen ones are always drawn)")
            btn = gr.Button("Show assignment", variant="primary")
            msg = tab_message("assign-msg")
        with gr.Column():
            # no label badge: it sat over the top-left corner, where a whole-image box's label is drawn
            out = gr.Image(label="Assignment", show_label=False, format="png", elem_id="assign-output")
            table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, elem_id="assign-table")

    def need_image(image, tags, vocab, props, shown):
        if image is None:
            raise user_error("upload an image first")
        return image, tags, vocab or None, int(props), int(shown)

    def show(image, tags, vocab, props, shown) -> tuple:
        """The assignment, and how many proposals were considered (the slider's value)."""
        return (*ep["assign"](image, tags, vocab, props, shown), props)

    def present(result) -> tuple:
        drawing, rows, props = result
        return png_file(drawing), [[r[i] for i in ORDER] for r in rows], summary(rows, props)

    run = handler(show, prepare=need_image, present=present)
    run.endpoint = ep["assign"]
    inputs, outputs = [image, tags, vocab, props, shown], [out, table, msg]
    btn.click(run, inputs, outputs, api_name="assign", show_progress_on=msg)
    # Enter in a text box, or a slider released / a number typed and Enter pressed, shows it again.
    for box in (tags, vocab):
        box.submit(run, inputs, outputs, api_name=False, show_progress_on=msg)
    for slider in (props, shown):
        slider.release(run, inputs, outputs, api_name=False, show_progress_on=msg)
    # An image already in the store brings its tags (the field kept the last image's, or the example).
    image.upload(handler(ep["stored_tags"], present=lambda t: t or gr.update()), image, tags,
                 api_name="stored_tags", show_progress="hidden")
