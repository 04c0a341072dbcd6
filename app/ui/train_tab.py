"""Train: start a background fine-tuning run from the tags (or an AlignDet pre-training run on the
stored images, no labels needed), follow it, use its model."""

from __future__ import annotations

import html
import json
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from detector.config import HEAD_PRESETS, IMAGE_LABEL_RULES
from train.heldout import caveat
from train.run_config import MAX_ITERS
from train.run_dir import ACTIVE_STATES

from .common import handler, on_line, tab_message, user_error


def shown_state(status: dict) -> str:
    """A run's state as a person reads it: "cancelling" between Cancel and the trainer's next step."""
    return "cancelling" if status.get("cancelling") else str(status.get("state", "?"))


def progress_html(status: dict) -> str:
    """Progress bar and one status line; every value from the run is escaped (it may hold user text)."""
    total = max(1, int(status.get("total") or 1))
    it = int(status.get("iteration") or 0)
    pct = 100 * min(it, total) / total
    metrics = status.get("metrics") or []
    eta = metrics[-1].get("eta_s") if metrics else None
    parts = [f"<b>{html.escape(shown_state(status))}</b>"]
    if status.get("total"):  # none while the app still prepares the run
        parts.append(f"iteration {it} / {total}")
    if status.get("message"):
        parts.append(html.escape(str(status["message"])))
    if eta and status.get("state") in ACTIVE_STATES:
        parts.append(f"ETA {float(eta):.0f} s")
    line = " · ".join(parts)
    return (f"<div class='progress-outer'><div class='progress-inner' style='width:{pct:.1f}%'></div></div>"
            f"<p>{line}</p>")


def _ap50(ev: dict | None, part: str) -> str:
    value = ((ev or {}).get(part) or {}).get("AP50")
    return "–" if value is None else f"{100 * value:.1f}"


def diagnostics_html(status: dict) -> str:
    """What the run did: novel / base AP50 before → after (with validation data) and where the
    image labels' chosen proposals were (Detic's diagnostics)."""
    parts = []
    before, after = status.get("evaluation_before"), status.get("evaluation")
    if before or after:
        parts.append(" · ".join(f"{part} AP50 {_ap50(before, part)} → {_ap50(after, part)}"
                                for part in ("novel", "base", "all") if (before or after or {}).get(part)))
    choices = status.get("image_label_choices") or {}
    if "select_size" in choices:
        parts.append(f"image labels trained proposals covering {100 * choices['select_size']:.0f}% of the image "
                     f"on average" + (f", the whole image {100 * choices['select_image_box']:.0f}% of the time"
                                      if "select_image_box" in choices else ""))
    return "".join(f"<p>{html.escape(p)}</p>" for p in parts)


def _ap(value) -> str:
    return "not measurable" if value is None else f"{value:.2f}"


def heldout_html(status: dict) -> str:
    """Did the tags help? Per label, image-level AP on the held-out tagged images before the run
    and at its best checkpoint so far (what "Use" serves); every name is escaped (user text)."""
    h = status.get("heldout")
    if not h:
        return ""
    if not h.get("images"):
        return f"<p class='heldout-note'>{html.escape(h.get('note') or 'no held-out images')}</p>"
    best = h.get("best_iteration")
    where = f"best checkpoint: iteration {best}" if best is not None else "no checkpoint scored yet"
    change = h.get("change")
    verdict = ("" if change is None else " — better" if change > 0 else " — worse" if change < 0 else " — unchanged")
    head = (f"Held-out tags ({h['images']} images, never trained on): mean image-level AP "
            f"{_ap(h.get('mean_before'))} → {_ap(h.get('mean_after'))} ({where}){verdict}")
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{v.get('positives', 0)}</td><td>{v.get('negatives', 0)}</td>"
        f"<td>{_ap(v.get('before'))}</td><td>{_ap(v.get('after'))}</td></tr>"
        for name, v in (h.get("labels") or {}).items())
    note = caveat(h)
    note = f"<p class='heldout-note'>{html.escape(note)}</p>" if note else ""
    return (f"<p><b>{html.escape(head)}</b></p>{note}<table class='heldout'><thead><tr><th>label</th><th>positive images</th>"
            f"<th>negative images</th><th>AP before</th><th>AP after</th></tr></thead><tbody>{rows}</tbody></table>")


SMOOTHING = 0.8  # weight of the running average (TensorBoard-style, bias-corrected)


def smoothed(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Exponential moving average, bias-corrected so the first points are not pulled to zero."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * float(v)
        out.append(avg / (1 - weight ** i))
    return out


def loss_curve(metrics: list[dict]) -> pd.DataFrame:
    """Long format for the plot: every logged loss ("raw", drawn faint) and its running average
    ("smoothed"), at integer iterations."""
    rows = [(int(m["iteration"]), float(m["loss"])) for m in metrics if "loss" in m and "iteration" in m]
    its, losses = [r[0] for r in rows], [r[1] for r in rows]
    return pd.DataFrame({"iteration": its * 2, "loss": losses + smoothed(losses),
                         "series": ["raw"] * len(rows) + ["smoothed"] * len(rows)})


MIN_X_SPAN = 40  # iterations: Vega-Lite draws about one x tick per 40 px, so a span of at least this many
# iterations keeps every tick on a whole iteration for plots up to ~2000 px wide (no "2.5")


def loss_plot(status: dict) -> dict:
    """The loss plot for a run: its curve over the whole run (0 to its total iterations, at least
    `MIN_X_SPAN`), so the x axis counts whole iterations and the curve grows as the run goes."""
    curve = loss_curve(status.get("metrics") or [])
    last = int(curve.iteration.max()) if len(curve) else 0
    # No points yet: no data at all (an empty table drew a legend and axis of "-Infinity, Infinity").
    return gr.update(value=curve if len(curve) else None,
                     x_lim=[0, max(int(status.get("total") or 0), last, MIN_X_SPAN)])


def _present_status(status: dict) -> tuple:
    """training_status -> (run id, progress, loss plot, log, evaluation)."""
    if status.get("state") == "none":
        return "", "No training runs yet.", loss_plot({}), "", gr.update(value="", visible=False)
    curve = loss_plot(status)
    # Only what the run has (a run without evaluation data showed three raw nulls); the image
    # labels' choices are said in words above (raw, they read as unexplained JSON)
    shown = {k: v for k, v in (("after", status.get("evaluation")), ("before", status.get("evaluation_before")))
             if v is not None}
    evaluation = json.dumps(shown, indent=2) if shown else ""
    # shown only with box AP to show: empty, it was a large blank box in the middle of the run
    return (status["id"], progress_html(status) + heldout_html(status) + diagnostics_html(status), curve,
            status.get("log", ""), gr.update(value=evaluation, visible=bool(evaluation)))


HISTORY_COLUMNS = ["run", "state", "iteration", "total", "held-out AP before → after", "AP50"]


def _present_runs(runs: list[dict]) -> pd.DataFrame:
    def heldout(r: dict) -> str:
        before, after = r.get("heldout_mean_before"), r.get("heldout_mean_after")
        return "" if before is None and after is None else f"{_ap(before)} → {_ap(after)}"

    return pd.DataFrame([{"run": r["id"], "state": shown_state(r), "iteration": r.get("iteration"),
                          "total": r.get("total"), HISTORY_COLUMNS[4]: heldout(r),
                          "AP50": ((r.get("evaluation") or {}).get("all") or {}).get("AP50")}
                         for r in runs], columns=HISTORY_COLUMNS)


def head_choices(capacity: dict | None = None) -> list[tuple[str, str]]:
    """Dropdown entries: keep the model's heads, or a preset with the parameters it gives the live model."""
    heads = (capacity or {}).get("heads") or {name: None for name in HEAD_PRESETS}
    current = ((capacity or {}).get("current") or {}).get("heads")
    keep = "keep the model's heads" + (f" ({current})" if current else "")
    return [(keep, "")] + [(f"{name} ({heads[name] / 1e6:.1f} M parameters)" if heads.get(name) else name, name)
                           for name in HEAD_PRESETS]


BACKBONE_LABELS = {"": "keep the model's setting", "frozen": "frozen (Vasconcelos: recommended)",
                   "last_stages": "fine-tune its last two stages", "all": "fine-tune all of it"}


def cost_markdown(cost: dict) -> str:
    """A dry run's measurement as one short paragraph (numbers only; nothing user-typed)."""
    kinds = " · ".join(f"{s:.2f} s per {'box' if k == 'box' else 'tag'} batch" for k, s in cost["seconds_per_iter"].items())
    minutes = cost["estimated_run_s"] / 60
    return (f"Measured on **{cost['device']}** ({cost['steps']} steps after a warm-up): {kinds}; "
            f"peak memory **{cost['peak_memory_mb']:.0f} MB**; {cost['trainable_params'] / 1e6:.1f} M parameters "
            f"train in this run ({cost['heads']} heads, backbone {cost['backbone']}); the whole run ≈ {minutes:.1f} min "
            f"(starting and loading the model{_once(cost)} included).")


def _once(cost: dict) -> str:
    """The one-off work a tags-only run does before its steps, as the estimate counts it."""
    if not cost.get("cached_features"):
        return ""
    return (f", caching {cost.get('tagged_images', 0) - cost.get('heldout_images', 0)} tagged images and scoring "
            f"{cost.get('heldout_images', 0)} held-out ones")


def build(ep: dict, server_folders: bool = False) -> dict:
    """The tab: its layout, then its events (starting runs; following, cancelling, resuming, deleting one)."""
    c = _layout(server_folders)
    _wire_start(ep, c)
    _wire_runs(ep, c)
    run, msg, use, use_anyway, heads = c.run, c.msg, c.use, c.use_anyway, c.heads
    refresh = handler(ep["capacity_choices"], present=lambda c: gr.update(choices=head_choices(c)))
    return {"use": use, "use_anyway": use_anyway, "run": run, "msg": msg, "need_run": need_run,
            "refresh": (refresh, None, [heads]), "restore": _wire_remember(c)}


REMEMBERED = ("iters", "rule", "ratio", "label_size", "box_size", "weight")  # the run settings a person types


def _wire_remember(c: SimpleNamespace) -> tuple:
    """The run settings a person typed survive a reload of the page: kept in their own browser
    (a reload had put 300 iterations back). -> (fn, inputs, outputs) restoring them when the tab
    opens (on the page's load the browser's copy is not read yet)."""
    kept = [getattr(c, name) for name in REMEMBERED]
    defaults = [component.value for component in kept]
    saved = gr.BrowserState({}, storage_key="ovd-train-settings")

    def remember(*values) -> dict:
        return dict(zip(REMEMBERED, values))

    def restore(settings, *current) -> tuple:
        """Only settings still at the page's defaults: never one the person just typed here."""
        settings = settings if isinstance(settings, dict) else {}
        return tuple(gr.update(value=settings[n]) if settings.get(n) not in (None, "") and now == default
                     else gr.update() for n, now, default in zip(REMEMBERED, current, defaults))

    remember.ui_only = restore.ui_only = True
    # every change (a restored value is saved again unchanged)
    gr.on([component.change for component in kept], remember, kept, saved, api_name=False, show_progress="hidden")
    return restore, [saved, *kept], kept


def need_run(run_id):
    """The operations on one run need one picked: (run id,), else a readable error."""
    if not run_id:
        raise user_error("no run selected")
    return (run_id,)


def _layout(server_folders: bool) -> SimpleNamespace:
    """Every component of the tab, left column then right, by its name (no events here)."""
    with gr.Row():
        with gr.Column():
            iters = gr.Number(300, label="Iterations", precision=0, minimum=1, maximum=MAX_ITERS)
            rule = gr.Radio(list(IMAGE_LABEL_RULES), value=IMAGE_LABEL_RULES[0], label="Image-label loss")
            ratio = gr.Textbox("1:1", label="Box : image-label batches")
            base = gr.Textbox(label="Start from (empty = the live model)")
            with gr.Accordion("Optional: box labels and validation", open=False):
                box = gr.Textbox(label="Box-labelled COCO JSON (on this machine)")
                box_images = gr.Textbox(label="its image folder")
                eval_data = gr.Textbox(label="Validation COCO JSON")
                eval_images = gr.Textbox(label="its image folder")
                novel = gr.Textbox(label="Novel class names (comma separated)")
                label_size = gr.Number(320, label="Shorter side of tagged images", precision=0, minimum=32)
                box_size = gr.Number(640, label="Shorter side of box-labelled images", precision=0, minimum=32)
                weight = gr.Number(0.1, label="Weight λ of the image-label loss", minimum=0)
            with gr.Accordion("Capacity: heads and backbone", open=False):
                heads = gr.Dropdown(head_choices(), value="", label="Heads (new heads start untrained)",
                                    elem_id="train-heads")
                backbone = gr.Radio([(label, value) for value, label in BACKBONE_LABELS.items()], value="",
                                    label="Backbone", elem_id="train-backbone")
            # in sight, not inside an accordion: how long a run takes here is asked before starting one
            measure = gr.Button("How long would it take? Measure time and memory (a dry run)", elem_id="train-measure")
            cost = gr.Markdown(elem_id="train-cost")
            with gr.Row():
                start = gr.Button("Start training", variant="primary")
                cancel = gr.Button("Cancel", variant="stop")
                resume = gr.Button("Resume")
            with gr.Accordion("Pre-train on my images (no labels needed)", open=False):
                gr.Markdown("AlignDet: teaches the neck, proposals and box head what objects in *your* images "
                            "look like, from the stored images alone. When it is done, press *Use this run's model* "
                            "and train from your tags as usual (training starts from the live model).")
                pre_iters = gr.Number(1000, label="Pre-training iterations", precision=0, minimum=1, maximum=MAX_ITERS)
                pre_size = gr.Number(640, label="Shorter side of the images", precision=0, minimum=32)
                pre_folder = gr.Textbox(label="Also a folder on the server (APP_ALLOWED_DIRS)", visible=server_folders,
                                        elem_id="pretrain-folder")
                pre_start = gr.Button("Pre-train on my images")
            msg = tab_message("train-msg")
        with gr.Column():
            run = gr.Textbox(label="Run", interactive=False, elem_id="train-run")
            status = gr.HTML(elem_id="train-status")
            # right under the verdict it acts on (and, on a phone, near the message line above the
            # run: below the plot it was a screen away from what it said)
            use = gr.Button("Use this run's model (hot swap)", elem_id="train-use")
            use_anyway = gr.Checkbox(False, label="Serve it anyway (even if it scored lower on its held-out tags, or has no held-out score)",
                                     elem_id="train-use-anyway")
            curve = gr.LinePlot(x="iteration", y="loss", color="series", title="Training loss", label="Loss",
                                x_title="iterations", x_lim=[0, MIN_X_SPAN],
                                color_map={"raw": "#c7d2fe", "smoothed": "#4338ca"}, y_lim=[0, None],
                                elem_id="train-curve")
            evaluation = gr.Code(label="Box AP on the validation set (COCO metrics)", language="json",
                                 visible=False, elem_id="train-evaluation")
            with gr.Row():
                delete_sure = gr.Checkbox(False, label="Yes, delete this run and its checkpoints",
                                          elem_id="train-delete-confirm")
                delete = gr.Button("Delete run", variant="stop", elem_id="train-delete")
    log = gr.Textbox(label="Log (tail)", lines=8, interactive=False)
    history = gr.Dataframe(_present_runs([]), headers=HISTORY_COLUMNS, label="Runs (click a row to open it)",
                           interactive=False, elem_id="train-history")
    timer = gr.Timer(2.0)

    inputs = [iters, rule, ratio, base, box, box_images, eval_data, eval_images, novel, label_size, box_size, weight,
              heads, backbone]
    return SimpleNamespace(**locals())


def _wire_start(ep: dict, c: SimpleNamespace) -> None:
    """Start a fine-tuning run, measure what one would cost (a dry run), or start pre-training."""
    inputs, start, measure, cost, pre_start = c.inputs, c.start, c.measure, c.cost, c.pre_start
    pre_iters, pre_size, base, pre_folder, run = c.pre_iters, c.pre_size, c.base, c.pre_folder, c.run
    msg = c.msg

    def started(run_id: str) -> tuple[str, str]:
        return run_id, f"started run `{run_id}` · {ep['training_plan']()['note']}"

    start.click(handler(ep["start_training"], present=started, error=on_line([run, msg], msg)), inputs,
                [run, msg], api_name=False, show_progress_on=msg)
    measure.click(handler(ep["estimate_training"], present=lambda c: (cost_markdown(c), "measured (no run was made)"),
                          error=on_line([cost, msg], msg)),
                  inputs, [cost, msg], api_name=False, show_progress_on=cost)

    pre_start.click(handler(ep["start_pretraining"],
                            prepare=lambda n, size, src, folder: (n, src, size, 4, folder),
                            present=lambda run_id: (run_id, f"started pre-training run `{run_id}`"),
                            error=on_line([run, msg], msg)),
                    [pre_iters, pre_size, base, pre_folder], [run, msg], api_name=False, show_progress_on=msg)


def _wire_runs(ep: dict, c: SimpleNamespace) -> None:
    """The run shown: its status every two seconds, the history (a row opens its run), Cancel,
    Resume and Delete."""
    run, msg, cancel, resume, delete, delete_sure = c.run, c.msg, c.cancel, c.resume, c.delete, c.delete_sure
    timer, history, status, curve, log, evaluation = c.timer, c.history, c.status, c.curve, c.log, c.evaluation

    cancel.click(handler(ep["cancel_training"], prepare=need_run, error=on_line([msg], msg)), run, msg,
                 api_name=False, show_progress_on=msg)
    resume.click(handler(ep["resume_training"], prepare=need_run, present=lambda run_id: f"resuming run `{run_id}`",
                         error=on_line([msg], msg)),
                 run, msg, api_name=False, show_progress_on=msg)
    status_out = [run, status, curve, log, evaluation]
    timer.tick(handler(ep["training_status"], present=_present_status), run, status_out, api_name=False,
               show_progress="hidden")
    timer.tick(handler(ep["training_runs"], present=_present_runs), None, history, api_name=False,
               show_progress="hidden")

    def open_run(runs: pd.DataFrame, evt: gr.SelectData):
        """A history row opens its run: status, curve, log and evaluation; Cancel, Resume and Use
        then act on it."""
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if runs is None or not len(runs) or row is None or row >= len(runs):
            return tuple(gr.update() for _ in status_out)
        return _present_status(ep["training_status"](str(runs.iloc[row]["run"])))

    open_run.endpoint = ep["training_status"]

    def sure(run_id, confirmed):
        need_run(run_id)
        if not confirmed:
            raise user_error(f"tick 'Yes, delete this run' to delete {run_id}")
        return (run_id,)

    delete.click(handler(ep["delete_run"], prepare=sure, present=lambda text: ("", text, False),
                         error=on_line([run, msg, delete_sure], msg)),
                 [run, delete_sure], [run, msg, delete_sure], api_name=False, show_progress_on=msg)
    history.select(open_run, history, status_out, api_name=False, show_progress_on=msg)
