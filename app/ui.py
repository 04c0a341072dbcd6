"""The Gradio interface: Detect, Assign, Tag, Dataset, Train and Model tabs over `AppService`.

Every action is also a named API endpoint (see README, "API"). Errors reach the person as one
readable message (`gr.Error`), never a traceback, and nothing they entered is lost.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile

import gradio as gr
import pandas as pd

from detector import CheckpointError, HubUnavailableError, ImageLoadError
from detector.vocabulary import PRESETS

from .jobs import ACTIVE_STATES, JobError
from .service import AppService
from .store import StoreError

USER_ERRORS = (ValueError, ImageLoadError, StoreError, JobError, HubUnavailableError, CheckpointError,
               FileNotFoundError)

CSS = """
.progress-outer {background:#e5e7eb;border-radius:6px;height:14px;width:100%}
.progress-inner {background:#4f46e5;border-radius:6px;height:14px}
#tag-image img {max-height: 460px; object-fit: contain}
"""

# Left/right arrows move through the tagging queue when the focus is not in a text field.
HEAD = """
<script>
document.addEventListener('keydown', (e) => {
  const t = e.target.tagName;
  if (t === 'INPUT' || t === 'TEXTAREA' || e.target.isContentEditable) return;
  const id = e.key === 'ArrowRight' ? 'tag-next' : e.key === 'ArrowLeft' ? 'tag-prev' : null;
  if (id) { const b = document.getElementById(id); if (b) { b.click(); e.preventDefault(); } }
});
</script>
"""


class ImageInput(gr.Image):
    """An image input whose upload goes to `detector.images` untouched: one loader for every path
    (EXIF, odd modes, huge images, clear errors) and no second decode by Gradio."""

    is_template = True  # rendered by Gradio's own Image widget

    def preprocess(self, payload):
        if payload is not None and getattr(payload, "path", None):
            return str(payload.path)
        return super().preprocess(payload)


def launch_options() -> dict:
    return {"theme": gr.themes.Soft(primary_hue="indigo"), "css": CSS, "head": HEAD}


def friendly(fn):
    """Turn expected errors into one readable message in the UI / API response."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise gr.Error(str(e)) from None

    return wrapper


def _gpu(fn):
    """On a ZeroGPU Space, run `fn` on the GPU; elsewhere unchanged."""
    if not os.environ.get("SPACE_ID"):
        return fn
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


def _json_file(data, name: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=f"-{name}.json", delete=False, encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
    return f.name


def _progress_html(status: dict) -> str:
    total = max(1, int(status.get("total") or 1))
    it = int(status.get("iteration") or 0)
    pct = 100 * it / total
    return (f"<div class='progress-outer'><div class='progress-inner' style='width:{pct:.1f}%'></div></div>"
            f"<p><b>{status.get('state', '?')}</b> · iteration {it} / {total} · {status.get('message', '')}</p>")


def build_app(service: AppService) -> gr.Blocks:
    s = service

    # ----------------------------------------------------------------------------------------
    @friendly
    @_gpu
    def detect(image, vocabulary, score, nms, max_det):
        if image is None:
            raise gr.Error("upload an image (or use the webcam) first")
        drawn, records = s.detect(image, vocabulary, score, nms, max_det)
        rows = [[r["class_name"], r["score"], *r["box"]] for r in records]
        return drawn, rows, _json_file(records, "detections")

    @friendly
    @_gpu
    def detect_batch(files, vocabulary, score, nms, max_det):
        if not files:
            raise gr.Error("add some images first")
        gallery, out = [], []
        for f in files:
            path = getattr(f, "name", f)
            drawn, records = s.detect(path, vocabulary, score, nms, max_det)
            gallery.append((drawn, f"{os.path.basename(path)}: {len(records)}"))
            out.append({"image": os.path.basename(path), "detections": records})
        return gallery, _json_file(out, "detections")

    @friendly
    def assign(image, tags, vocabulary, proposals):
        if image is None:
            raise gr.Error("upload an image first")
        return s.assign(image, tags, vocabulary or None, int(proposals))

    # --- tagging --------------------------------------------------------------------------------
    def _view(index: int):
        images = s.queue()
        tagged, total = s.store.progress()
        labels = s.store.labels()
        if not images:
            return (None, "No images yet: upload some above.", gr.update(choices=labels, value=[]),
                    gr.update(choices=labels, value=[]), 0, "")
        index = max(0, min(int(index or 0), len(images) - 1))
        row = images[index]
        status = (f"**Image {index + 1} / {len(images)}** · tagged {tagged} / {total} · "
                  f"`{row['original_name'] or row['hash'][:12]}`")
        return (str(s.store.image_dir / row["file"]), status,
                gr.update(choices=labels, value=row["positives"]), gr.update(choices=labels, value=row["negatives"]),
                index, row["hash"])

    def _first_untagged() -> int:
        for i, row in enumerate(s.queue()):
            if not row["positives"] and not row["negatives"]:
                return i
        return 0

    @friendly
    def add_images(files):
        result = s.add_images(files)
        msg = f"added {len(result['added'])} image(s)"
        if result["skipped"]:
            msg += f"; skipped {len(result['skipped'])}: " + "; ".join(result["skipped"][:5])
        return (msg, *_view(_first_untagged()))

    @friendly
    def add_folder(folder):
        result = s.add_folder(folder)
        return (f"added {len(result['added'])} image(s), skipped {len(result['skipped'])}", *_view(_first_untagged()))

    def _status(index: int) -> str:
        return _view(index)[1]

    @friendly
    def save_tags(image_hash, positives, negatives, index):
        """Saved on every change. Only the status line is returned: re-setting the dropdowns here
        would fire another change and could overwrite what the person is typing. A change that
        merely mirrors the store (navigation) writes nothing."""
        if image_hash:
            stored = s.store.tags(image_hash)
            if (sorted(positives or []), sorted(negatives or [])) != (sorted(stored["positives"]),
                                                                      sorted(stored["negatives"])):
                s.tag(image_hash, positives or [], negatives or [])
        return _status(index)

    @friendly
    def suggest(image_hash, vocabulary):
        if not image_hash:
            raise gr.Error("no image selected")
        vocab = vocabulary if (vocabulary or "").strip() else s.store.labels()
        if not vocab:
            raise gr.Error("type a vocabulary in the Detect tab (or tag a few images) first")
        names = s.suggest(image_hash, vocab)
        return gr.update(choices=names, value=[]), (f"{len(names)} suggestion(s)" if names else "nothing detected")

    @friendly
    def accept(image_hash, positives, checked, negatives, index):
        merged = list(dict.fromkeys([*(positives or []), *(checked or [])]))
        if image_hash:
            s.tag(image_hash, merged, [n for n in negatives or [] if n not in merged])
        return (*_view(index), gr.update(choices=[], value=[]))

    # --- dataset -------------------------------------------------------------------------------
    def dataset_view():
        counts = s.store.counts()
        df = pd.DataFrame([{"label": k, "images": v["positive"], "not present": v["negative"]}
                           for k, v in counts.items()], columns=["label", "images", "not present"])
        labels = list(counts)
        tagged, total = s.store.progress()
        return (df, df, f"{total} images, {tagged} tagged, {len(labels)} labels",
                gr.update(choices=labels), gr.update(choices=labels), gr.update(choices=labels),
                gr.update(choices=labels))

    @friendly
    def browse(label):
        rows = [r for r in s.queue() if label in r["positives"]] if label else []
        return [(str(s.store.image_dir / r["file"]), r["original_name"] or r["hash"][:12]) for r in rows]

    @friendly
    def rename(old, new):
        if not old or not (new or "").strip():
            raise gr.Error("pick a label and type its new name")
        s.store.rename_label(old, new)
        return dataset_view()

    @friendly
    def merge(sources, into):
        if not sources or not (into or "").strip():
            raise gr.Error("pick labels to merge and the name to merge them into")
        s.store.merge_labels(sources, into)
        return dataset_view()

    @friendly
    def delete(label):
        if not label:
            raise gr.Error("pick a label to delete")
        s.store.delete_label(label)
        return dataset_view()

    @friendly
    def import_labels(file):
        if file is None:
            raise gr.Error("choose a Detic/COCO JSON, CSV or JSONL file")
        result = s.store.import_labels(getattr(file, "name", file))
        return (f"imported {result['images']} image(s), skipped {result['skipped']}", *dataset_view())

    @friendly
    def export(fmt):
        return str(s.export(fmt))

    # --- training ------------------------------------------------------------------------------
    @friendly
    def start_training(iters, loss, ratio, base, box_data, box_images, eval_data, eval_images, novel):
        run_id = s.start_training(int(iters), loss, ratio or "1:1", base or None, box_data or None,
                                  box_images or None, eval_data or None, eval_images or None, novel or None)
        return run_id, f"started run `{run_id}`"

    @friendly
    def cancel_training(run_id):
        if not run_id:
            raise gr.Error("no run selected")
        s.jobs.cancel(run_id)
        return f"cancel requested for `{run_id}`; it stops after the current step with a checkpoint"

    def training_status(run_id):
        """Status, progress, loss curve, log tail and history for the given (or latest) run."""
        runs = s.jobs.runs()
        history = pd.DataFrame([{"run": r["id"], "state": r.get("state"), "iteration": r.get("iteration"),
                                 "total": r.get("total"),
                                 "AP50": (r.get("evaluation") or {}).get("all", {}).get("AP50")} for r in runs],
                               columns=["run", "state", "iteration", "total", "AP50"])
        run_id = run_id or (runs[0]["id"] if runs else None)
        if not run_id:
            return run_id, "No training runs yet.", pd.DataFrame({"iteration": [], "loss": []}), "", history, ""
        status = s.jobs.status(run_id)
        metrics = s.jobs.metrics(run_id)
        curve = pd.DataFrame([{"iteration": m["iteration"], "loss": m["loss"]} for m in metrics if "loss" in m],
                             columns=["iteration", "loss"])
        eta = metrics[-1].get("eta_s") if metrics else None
        html = _progress_html(status) + (f"<p>ETA {eta:.0f} s</p>" if eta and status["state"] in ACTIVE_STATES else "")
        ev = (s.jobs.runs_dir / run_id / "eval.json")
        evaluation = ev.read_text(encoding="utf-8") if ev.exists() else ""
        return run_id, html, curve, s.jobs.log_tail(run_id), history, evaluation

    @friendly
    def use_model(run_id):
        if not run_id:
            raise gr.Error("pick a finished run (or type a model source in the Model tab)")
        info = s.use_model(run_id)
        return info, f"now serving `{info['source']}`"

    @friendly
    def load_model(source):
        if not (source or "").strip():
            raise gr.Error("type a preset, a local folder or a Hub id")
        info = s.use_model(source.strip())
        return info, f"now serving `{info['source']}`"

    @friendly
    def push(repo_id, token, private):
        if not (repo_id or "").strip():
            raise gr.Error("type a Hub repo id like 'you/my-detector'")
        return f"pushed: {s.push_to_hub(repo_id.strip(), token or None, bool(private))}"

    # ================================ layout ================================================
    with gr.Blocks(title="Open-vocabulary detector") as demo:
        gr.Markdown("# Detect anything you can name\nType a vocabulary, detect, tag images with what they "
                    "contain, retrain in the background, and serve the new model, all on this page.")
        model_line = gr.Markdown(f"Model: `{s.model_info.source}` ({s.model_info.note})")
        with gr.Tabs():
            with gr.Tab("Detect"):
                with gr.Row():
                    with gr.Column():
                        image = ImageInput(label="Image", type="filepath", sources=["upload", "webcam", "clipboard"],
                                           elem_id="detect-image")
                        vocabulary = gr.Textbox(label="Vocabulary (comma or newline separated)",
                                                value="person, cup, laptop", lines=2, elem_id="vocabulary")
                        preset = gr.Dropdown(list(PRESETS), label="Vocabulary presets", value=None)
                        with gr.Row():
                            score = gr.Slider(0, 1, value=s.predictor.config.score_threshold, step=0.01,
                                              label="Score threshold")
                            nms = gr.Slider(0.05, 1, value=s.predictor.config.nms_threshold, step=0.05,
                                            label="NMS IoU")
                            max_det = gr.Slider(1, 300, value=s.predictor.config.max_detections, step=1,
                                                label="Max detections")
                        detect_btn = gr.Button("Detect", variant="primary", elem_id="detect-button")
                    with gr.Column():
                        out_image = gr.Image(label="Detections", elem_id="detect-output", format="png")
                        table = gr.Dataframe(headers=["name", "score", "x1", "y1", "x2", "y2"], label="Boxes",
                                             interactive=False)
                        download = gr.File(label="Detections (JSON)")
                with gr.Accordion("Many images at once", open=False):
                    batch_files = gr.File(file_count="multiple", file_types=["image"], label="Images")
                    batch_btn = gr.Button("Detect all")
                    batch_gallery = gr.Gallery(label="Results", columns=4)
                    batch_json = gr.File(label="All detections (JSON)")

            with gr.Tab("Assign"):
                gr.Markdown("Which proposal does an image-level tag train? Grey: top proposals. "
                            "<span style='color:#e6194b'>■ max_size</span> (Detic's default), "
                            "<span style='color:#3cb44b'>■ image_box</span>, "
                            "<span style='color:#4363d8'>■ max_score</span>.")
                with gr.Row():
                    with gr.Column():
                        a_image = ImageInput(label="Image", type="filepath", elem_id="assign-image")
                        a_tags = gr.Textbox(label="Image-level tags", value="person")
                        a_vocab = gr.Textbox(label="Vocabulary (optional; defaults to the tags)")
                        a_props = gr.Slider(5, 300, value=50, step=1, label="Proposals shown")
                        a_btn = gr.Button("Show assignment", variant="primary")
                    with gr.Column():
                        a_out = gr.Image(label="Assignment", format="png")
                        a_table = gr.Dataframe(headers=["rule", "proposal", "box", "labels"], interactive=False,
                                               elem_id="assign-table")

            with gr.Tab("Tag"):
                with gr.Accordion("Add images", open=True):
                    with gr.Row():
                        upload = gr.File(file_count="multiple", file_types=["image", ".zip"],
                                         label="Images or a .zip", elem_id="tag-upload")
                        with gr.Column():
                            folder = gr.Textbox(label="Folder on this machine", visible=allows_server_folders(),
                                                placeholder="/path/to/photos")
                            folder_btn = gr.Button("Add folder", visible=allows_server_folders())
                    upload_msg = gr.Markdown()
                with gr.Row():
                    with gr.Column(scale=3):
                        t_image = gr.Image(label="Image", interactive=False, elem_id="tag-image")
                        with gr.Row():
                            prev_btn = gr.Button("◀ Previous", elem_id="tag-prev")
                            next_untagged = gr.Button("Next untagged")
                            next_btn = gr.Button("Next ▶", elem_id="tag-next")
                    with gr.Column(scale=2):
                        t_status = gr.Markdown(elem_id="tag-status")
                        positives = gr.Dropdown([], multiselect=True, allow_custom_value=True,
                                                label="Present (type a new name and press Enter)",
                                                elem_id="tag-positives")
                        negatives = gr.Dropdown([], multiselect=True, allow_custom_value=True,
                                                label="Not present (optional)")
                        suggest_btn = gr.Button("Suggest from the current model")
                        suggestions = gr.CheckboxGroup([], label="Suggestions (check to accept)")
                        accept_btn = gr.Button("Add checked suggestions")
                        suggest_msg = gr.Markdown()
                index = gr.State(0)
                current = gr.Textbox(visible=False)

            with gr.Tab("Dataset"):
                d_summary = gr.Markdown()
                with gr.Row():
                    d_plot = gr.BarPlot(x="label", y="images", title="Images per label", label="Counts")
                    d_table = gr.Dataframe(interactive=False, label="Counts")
                with gr.Row():
                    browse_label = gr.Dropdown([], label="Browse images of label")
                    gallery = gr.Gallery(label="Images", columns=6)
                with gr.Row():
                    ren_old = gr.Dropdown([], label="Rename label")
                    ren_new = gr.Textbox(label="New name (an existing name merges)")
                    ren_btn = gr.Button("Rename")
                with gr.Row():
                    merge_src = gr.Dropdown([], multiselect=True, label="Merge labels")
                    merge_into = gr.Textbox(label="into")
                    merge_btn = gr.Button("Merge")
                with gr.Row():
                    del_label = gr.Dropdown([], label="Delete label")
                    del_btn = gr.Button("Delete", variant="stop")
                with gr.Row():
                    imp_file = gr.File(label="Import labels (Detic/COCO JSON, CSV, JSONL)")
                    imp_btn = gr.Button("Import")
                    imp_msg = gr.Markdown()
                with gr.Row():
                    exp_fmt = gr.Radio(["detic", "csv", "coco_detections"], value="detic", label="Export format")
                    exp_btn = gr.Button("Export")
                    exp_file = gr.File(label="Export")

            with gr.Tab("Train"):
                with gr.Row():
                    with gr.Column():
                        tr_iters = gr.Number(300, label="Iterations", precision=0, minimum=1)
                        tr_loss = gr.Radio(["max_size", "image_box", "max_score"], value="max_size",
                                           label="Image-label loss")
                        tr_ratio = gr.Textbox("1:1", label="Box : image-label batches")
                        tr_base = gr.Textbox(label="Start from (empty = the live model)")
                        with gr.Accordion("Optional: box labels and validation", open=False):
                            tr_box = gr.Textbox(label="Box-labelled COCO JSON (on this machine)")
                            tr_box_images = gr.Textbox(label="its image folder")
                            tr_eval = gr.Textbox(label="Validation COCO JSON")
                            tr_eval_images = gr.Textbox(label="its image folder")
                            tr_novel = gr.Textbox(label="Novel class names (comma separated)")
                        with gr.Row():
                            tr_start = gr.Button("Start training", variant="primary")
                            tr_cancel = gr.Button("Cancel", variant="stop")
                        tr_msg = gr.Markdown()
                    with gr.Column():
                        tr_run = gr.Textbox(label="Run", interactive=False)
                        tr_status = gr.HTML()
                        tr_curve = gr.LinePlot(x="iteration", y="loss", title="Training loss", label="Loss")
                        tr_eval_out = gr.Code(label="Evaluation", language="json")
                        tr_use = gr.Button("Use this run's model (hot swap)")
                tr_log = gr.Textbox(label="Log (tail)", lines=8, interactive=False)
                tr_history = gr.Dataframe(label="Runs", interactive=False)
                timer = gr.Timer(2.0)

            with gr.Tab("Model"):
                m_info = gr.JSON(label="Loaded model")
                with gr.Row():
                    m_source = gr.Textbox(label="Load a model: preset (offline, tiny, resnet50-clip), folder or Hub id")
                    m_load = gr.Button("Load")
                with gr.Row():
                    m_repo = gr.Textbox(label="Push to Hub repo")
                    m_token = gr.Textbox(label="Token (or set HF_TOKEN; never stored)", type="password")
                    m_private = gr.Checkbox(True, label="Private")
                    m_push = gr.Button("Push")
                m_msg = gr.Markdown()

        # ================================ events ================================================
        det_inputs = [image, vocabulary, score, nms, max_det]
        det_outputs = [out_image, table, download]
        detect_btn.click(detect, det_inputs, det_outputs, api_name="detect")
        vocabulary.submit(detect, det_inputs, det_outputs, api_name=False)
        for slider in (score, nms, max_det):
            slider.release(detect, det_inputs, det_outputs, api_name=False)
        preset.change(lambda p: ", ".join(PRESETS[p]) if p else gr.update(), preset, vocabulary, api_name=False)
        batch_btn.click(detect_batch, [batch_files, vocabulary, score, nms, max_det], [batch_gallery, batch_json],
                        api_name="detect_batch")
        a_btn.click(assign, [a_image, a_tags, a_vocab, a_props], [a_out, a_table], api_name="assign")

        view_out = [t_image, t_status, positives, negatives, index, current]
        upload.upload(add_images, upload, [upload_msg, *view_out], api_name="add_images")
        folder_btn.click(add_folder, folder, [upload_msg, *view_out], api_name="add_folder")
        prev_btn.click(lambda i: _view(i - 1), index, view_out, api_name=False)
        next_btn.click(lambda i: _view(i + 1), index, view_out, api_name=False)
        next_untagged.click(lambda: _view(_first_untagged()), None, view_out, api_name=False)
        positives.change(save_tags, [current, positives, negatives, index], t_status, api_name=False,
                         show_progress="hidden")
        negatives.change(save_tags, [current, positives, negatives, index], t_status, api_name=False,
                         show_progress="hidden")
        suggest_btn.click(suggest, [current, vocabulary], [suggestions, suggest_msg], api_name="suggest_tags")
        accept_btn.click(accept, [current, positives, suggestions, negatives, index], [*view_out, suggestions],
                         api_name=False)

        ds_out = [d_plot, d_table, d_summary, browse_label, ren_old, merge_src, del_label]
        browse_label.change(browse, browse_label, gallery, api_name=False)
        ren_btn.click(rename, [ren_old, ren_new], ds_out, api_name=False)
        merge_btn.click(merge, [merge_src, merge_into], ds_out, api_name=False)
        del_btn.click(delete, del_label, ds_out, api_name=False)
        imp_btn.click(import_labels, imp_file, [imp_msg, *ds_out], api_name=False)
        exp_btn.click(export, exp_fmt, exp_file, api_name=False)

        tr_start.click(start_training, [tr_iters, tr_loss, tr_ratio, tr_base, tr_box, tr_box_images, tr_eval,
                                        tr_eval_images, tr_novel], [tr_run, tr_msg], api_name=False)
        tr_cancel.click(cancel_training, tr_run, tr_msg, api_name=False)
        tr_out = [tr_run, tr_status, tr_curve, tr_log, tr_history, tr_eval_out]
        timer.tick(training_status, tr_run, tr_out, api_name=False, show_progress="hidden")
        tr_use.click(use_model, tr_run, [m_info, tr_msg], api_name=False)
        m_load.click(load_model, m_source, [m_info, m_msg], api_name=False)
        m_push.click(push, [m_repo, m_token, m_private], m_msg, api_name=False)

        def on_load():
            return (*_view(_first_untagged()), *dataset_view(), s.info(),
                    f"Model: `{s.model_info.source}` ({s.model_info.note})")

        demo.load(on_load, None, [*view_out, *ds_out, m_info, model_line], api_name=False)
        _api_endpoints(s)
    return demo


def allows_server_folders() -> bool:
    """Reading server folders is for local use: on by default unless the app is served publicly."""
    return os.environ.get("APP_ALLOW_SERVER_FOLDERS", "1") == "1"


def _api_endpoints(s: AppService) -> None:
    """Plain-value endpoints for gradio_client (the UI events above are tied to components)."""

    @friendly
    def tag(image_hash: str, positives: str, negatives: str = "") -> dict:
        return s.tag(image_hash, positives, negatives)

    @friendly
    def queue() -> list[dict]:
        return [{k: r[k] for k in ("hash", "original_name", "positives", "negatives")} for r in s.queue()]

    @friendly
    def export_labels(fmt: str = "detic") -> str:
        return str(s.export(fmt))

    @friendly
    def dataset_counts() -> dict:
        return s.store.counts()

    @friendly
    def rename_label(old: str, new: str) -> dict:
        s.store.rename_label(old, new)
        return s.store.counts()

    @friendly
    def delete_label(name: str) -> dict:
        s.store.delete_label(name)
        return s.store.counts()

    @friendly
    def merge_labels(sources: str, into: str) -> dict:
        s.store.merge_labels([x.strip() for x in sources.split(",") if x.strip()], into)
        return s.store.counts()

    @friendly
    def import_labels(path: str) -> dict:
        return s.store.import_labels(path)

    @friendly
    def start_training(iters: float = 300, image_loss: str = "max_size", ratio: str = "1:1",
                       base_model: str = "", box_data: str = "", box_images: str = "", label_size: float = 320,
                       box_size: float = 640) -> str:
        return s.start_training(int(iters), image_loss, ratio, base_model or None, box_data or None,
                                box_images or None, label_size=int(label_size), box_size=int(box_size))

    @friendly
    def training_status(run_id: str = "") -> dict:
        if not run_id:
            active = s.jobs.active()
            runs = s.jobs.runs()
            run_id = active["id"] if active else (runs[0]["id"] if runs else "")
        if not run_id:
            return {"state": "none"}
        return {**s.jobs.status(run_id), "metrics": s.jobs.metrics(run_id)[-1:]}

    @friendly
    def cancel_training(run_id: str) -> str:
        s.jobs.cancel(run_id)
        return "cancel requested"

    @friendly
    def use_model(source: str) -> dict:
        return s.use_model(source)

    @friendly
    def model_info() -> dict:
        return s.info()

    for fn in (tag, queue, export_labels, dataset_counts, rename_label, delete_label, merge_labels, import_labels,
               start_training, training_status, cancel_training, use_model, model_info):
        gr.api(fn, api_name=fn.__name__)
