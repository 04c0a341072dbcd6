"""Model: what is served, load another (preset, folder, Hub id), push the live one to the Hub."""

from __future__ import annotations

import html

import gradio as gr

from detector.presets import PRESETS

from ..markdown import literal
from ..service import headline
from .common import handler, tab_message


def served_name(info: dict) -> str:
    """What is served, for people: a run of this app by its id (not its folder on the server),
    otherwise the source as loaded (a preset, a Hub id, an allowed folder)."""
    return f"run {info['run']}" if info.get("run") else str(info.get("source", "?"))


def model_header(info: dict) -> str:
    """The page's model line, and a banner whenever the served model cannot give meaningful
    answers (`limits`), saying what is missing and how to get it. Everything escaped."""
    note = str(info.get("note") or "")
    plain = str(info.get("headline") or headline(note))
    line = f"<p id='model-line'>Model: <code>{html.escape(served_name(info))}</code>"
    line += f" · {html.escape(plain)}</p>" if plain else "</p>"
    if note and note != plain:  # the technical reason, one click away
        line += (f"<details id='model-details'><summary>details</summary><p>{html.escape(note)}</p></details>")
    if info.get("capabilities"):
        boxes = " Boxes come from selective search." if str(info.get("proposals", "")).startswith("selective") else ""
        line += f"<p class='model-capabilities'>Recognises: {html.escape(str(info['capabilities']))}{boxes}</p>"
    limits = info.get("limits") or []
    if not limits:
        return line
    *missing, how = limits
    items = "".join(f"<li>{html.escape(m)}</li>" for m in missing)
    return (f"{line}<div id='honesty-banner' role='alert'><b>⚠️ This model cannot give meaningful answers "
            f"yet.</b><ul>{items}</ul><p>{html.escape(how)}</p></div>")


def _millions(n) -> str:
    return f"{n / 1e6:.1f} M" if isinstance(n, (int, float)) else "?"


def _ap(value) -> str:
    return "not measurable" if value is None else f"{value:.2f}"


def model_summary(info: dict, heldout: dict | None = None) -> str:
    """What a person needs to know about the served model first, as Markdown: what it recognises,
    how it was trained, its held-out scores when it came from a run (`heldout`: the run's
    `training_status(run)["heldout"]`), device and parameters. Every value escaped."""
    def e(value) -> str:
        return literal(value)

    trained = int(info.get("trained_class_names") or 0)
    recognises = info.get("capabilities") or (
        "CLIP region scores: most everyday objects by name." if info.get("region_scoring") else "")
    if trained:
        recognises = f"{recognises} Trained on {trained} name(s) from tags.".strip()
    lines = [f"**Recognises:** {e(recognises or 'nothing reliable yet: train it on tags (Train tab).')}"]
    how = [f"backbone {e(info.get('backbone', '?'))} "
           f"({'pre-trained' if info.get('backbone_pretrained') else 'random weights'}, "
           f"{e(info.get('backbone_training', '?'))})",
           f"heads {e(info.get('heads', '?'))}" + (f" from {e(info['pretrained_heads'])}"
                                                   if info.get("pretrained_heads") else ""),
           f"proposals: {e(info.get('proposals', '?'))}",  # says "(RPN not trained yet)" itself
           f"{trained} name(s) learnt from tags" if trained else "not trained on tags yet"]
    lines.append(f"**How it was trained:** {'; '.join(how)}.")
    if info.get("run"):
        scores = ""
        if heldout and (heldout.get("mean_before") is not None or heldout.get("mean_after") is not None):
            scores = (f": held-out image-level AP {_ap(heldout.get('mean_before'))} → "
                      f"{_ap(heldout.get('mean_after'))} ({heldout.get('images', '?')} held-out images)")
        elif heldout and heldout.get("note"):
            scores = f": {e(heldout['note'])}"
        lines.append(f"**From run** <code>{e(info['run'])}</code>{scores}.")
    params = info.get("parameters") or {}
    lines.append(f"**Device:** {e(info.get('device', '?'))} · **Parameters:** {_millions(params.get('total'))} "
                 f"({_millions(params.get('trainable'))} trainable)")
    lines.append(f"**Served:** <code>{e(served_name(info))}</code> · {e(info.get('headline') or info.get('note') or '')}")
    return "\n\n".join(lines)


def build(ep: dict) -> dict:
    summary = gr.Markdown(elem_id="model-summary")
    with gr.Accordion("All details (JSON)", open=False, elem_id="model-json"):
        info = gr.JSON(label="Loaded model")
    with gr.Row():
        source = gr.Textbox(label=f"Load a model: preset ({', '.join(PRESETS)}), run id, folder or Hub id")
        load = gr.Button("Load")
    with gr.Row():
        repo = gr.Textbox(label="Push to Hub repo")
        token = gr.Textbox(label="Token (or set HF_TOKEN; never stored)", type="password")
        private = gr.Checkbox(True, label="Private")
        push = gr.Button("Push")
    msg = tab_message("model-msg")
    push.click(handler(ep["push_to_hub"], present=lambda url: f"pushed: {url}"), [repo, token, private], msg,
               api_name="push_to_hub", show_progress_on=msg)

    def present(model: dict) -> tuple:
        """model_info -> (summary, JSON): the held-out scores of the run it came from, if any."""
        heldout = None
        if model.get("run"):
            try:
                heldout = ep["training_status"](model["run"]).get("heldout")
            except gr.Error:  # the run's folder went away meanwhile: no scores to show
                heldout = None
        return model_summary(model, heldout), model

    return {"info": info, "summary": summary, "present": present, "source": source, "load": load, "msg": msg}
