"""Dataset: counts per label, browse, rename / merge / delete labels, import and export."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from ..markdown import literal
from .common import error_text, handler, tab_message, user_error


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


MIN_Y_SPAN = 10


def _present(summary: dict) -> tuple:
    """dataset summary -> (plot, table, line, and the label list for every label picker)."""
    labels = summary["labels"]
    df = pd.DataFrame([{"label": k, "images": v["positive"], "not present": v["negative"]} for k, v in labels.items()],
                      columns=["label", "images", "not present"])
    pick = gr.update(choices=list(labels))
    # a y axis of at least MIN_Y_SPAN images keeps its ticks on whole images (1 and 2 images drew 0.5, 1.5)
    plot = gr.update(value=df, y_lim=[0, max([MIN_Y_SPAN, *df["images"]])])
    return (plot, df, f"{_count(summary['images'], 'image')}, {summary['tagged']} tagged, {_count(len(labels), 'label')}",
            pick, pick, pick, pick)


def build(ep: dict) -> dict:
    """The tab: its layout, then its events by what they do (browse, label edits, import, export)."""
    c = _layout()
    _wire_browse(ep, c)
    _wire_label_edits(ep, c)
    _wire_import(ep, c)
    _wire_export(ep, c)
    return {"refresh": (handler(ep["dataset"], present=_present), [], c.out), "open_in_tag": c.open_in_tag,
            "picked": c.picked_image, "msg": c.msg}


def _layout() -> SimpleNamespace:
    """Every component of the tab, top to bottom, by its name (no events here)."""
    summary = gr.Markdown()
    with gr.Row():
        plot = gr.BarPlot(x="label", y="images", title="Images per label", label="Counts", y_lim=[0, None],
                          x_label_angle=-35, sort="-y", elem_id="dataset-plot")
        table = gr.Dataframe(interactive=False, label="Counts", elem_id="dataset-table")
    with gr.Row():
        with gr.Column(scale=1):
            browse_label = gr.Dropdown([], label="Browse images of label", allow_custom_value=True)
            open_in_tag = gr.Button("Open in Tag", visible=False, elem_id="dataset-open-in-tag")
        gallery = gr.Gallery(label="Images (pick one to open it in Tag)", columns=6, scale=3,
                             object_fit="contain", elem_id="dataset-gallery")  # 1 x 4000 stays visible
    browsed = gr.State([])  # [{hash, name}] of the images in the gallery, in its order
    picked_image = gr.State("")  # the hash of the image picked in the gallery
    # The message line sits by the edits, import and export (at the top it was a screen away from
    # the buttons, which seemed to do nothing).
    msg = tab_message("dataset-msg")
    # The label pickers take any value: one renamed or deleted since (here or on another page) is
    # answered by the store in one sentence, not refused by Gradio with its own raw message.
    with gr.Row():
        ren_old = gr.Dropdown([], label="Rename label", allow_custom_value=True)
        ren_new = gr.Textbox(label="New name (an existing name merges)")
        ren_btn = gr.Button("Rename")
    with gr.Row():
        merge_src = gr.Dropdown([], multiselect=True, label="Merge labels", allow_custom_value=True)
        merge_into = gr.Textbox(label="into")
        merge_btn = gr.Button("Merge")
    with gr.Row():
        del_label = gr.Dropdown([], label="Delete label", allow_custom_value=True)
        del_confirm = gr.Checkbox(False, label="Yes, remove it from every image", elem_id="dataset-delete-confirm")
        del_btn = gr.Button("Delete", variant="stop")
    with gr.Row():
        imp_file = gr.File(label="Import labels: tags (Detic/COCO JSON, CSV, JSONL) or boxes (COCO JSON, Label Studio "
                                 "JSON, a YOLO .zip with data.yaml or classes.txt, a Pascal VOC .zip of XML), plus the images (files or a .zip) "
                                 "unless they are already here", file_count="multiple",
                           file_types=[".json", ".csv", ".jsonl", "image", ".zip"], elem_id="dataset-import")
        imp_btn = gr.Button("Import", elem_id="dataset-import-button")
        # The API's /import_labels: the same operation on its own hidden event, whose errors stay
        # errors for API callers (the button's event puts them on the message line instead).
        api_files = gr.File(file_count="multiple", visible=False)
        api_btn = gr.Button(visible=False)
    with gr.Row():
        exp_fmt = gr.Radio(["detic", "csv", "coco_detections", "yolo", "voc", "label_studio"], value="detic",
                           label="Export format (tags: detic, csv; boxes: the others, yours where you have some and "
                                 "the model's elsewhere; coco_detections: the model's only)")
        exp_images = gr.Checkbox(False, label="Zip the images with the labels", elem_id="dataset-export-images")
        exp_btn = gr.Button("Export")
        exp_file = gr.File(label="Export", interactive=False, elem_id="dataset-export")  # an output: no drop zone

    out = [plot, table, summary, browse_label, ren_old, merge_src, del_label]
    return SimpleNamespace(**locals())


def _wire_browse(ep: dict, c: SimpleNamespace) -> None:
    """A label's images in the gallery; the one picked can be opened in Tag (`ui.build_app`)."""
    browse_label, gallery, browsed, picked_image = c.browse_label, c.gallery, c.browsed, c.picked_image
    open_in_tag, msg = c.open_in_tag, c.msg

    def browse(rows: list[dict]) -> tuple:
        """The label's images in the gallery; nothing picked yet."""
        return ([(ep["image_preview"](r["hash"], 256), r["name"]) for r in rows], rows, "",
                gr.update(visible=False))

    browse_label.change(handler(ep["images_with_label"], present=browse, prepare=lambda label: (label or "",)),
                        browse_label, [gallery, browsed, picked_image, open_in_tag], api_name=False, show_progress_on=msg)

    def pick(rows: list[dict], evt: gr.SelectData):
        """Pure UI: the picked image, and the button that opens it in Tag (its name on it; the
        button's text is plain text, never HTML)."""
        row = rows[evt.index] if isinstance(evt.index, int) and 0 <= evt.index < len(rows or []) else None
        if row is None:
            return "", gr.update(visible=False)
        return row["hash"], gr.update(visible=True, value=f"Open {row['name']} in Tag")

    pick.ui_only = True
    gallery.select(pick, browsed, [picked_image, open_in_tag], api_name=False, show_progress="hidden")


def _wire_label_edits(ep: dict, c: SimpleNamespace) -> None:
    """Rename, merge and delete labels; each edit shows the new summary everywhere."""
    out, msg, ren_btn, ren_old, ren_new, merge_btn = c.out, c.msg, c.ren_btn, c.ren_old, c.ren_new, c.merge_btn
    merge_src, merge_into, del_btn, del_label = c.merge_src, c.merge_into, c.del_btn, c.del_label
    del_confirm = c.del_confirm

    unchanged = tuple(gr.update() for _ in out)

    def emptied(summary: dict, picker, empty=None) -> list:
        """The new summary everywhere, with `picker` emptied: the labels it held are gone."""
        views = list(_present(summary))
        views[out.index(picker)] = gr.update(choices=list(summary["labels"]), value=empty)
        return views

    def picked(old, new):
        if not old:
            raise user_error("pick the label to rename first")
        if not str(new or "").strip():
            raise user_error(f"type the new name for {old!r} first")
        return old, new

    def rename(old, new) -> tuple:
        """The rename, and the existing label it merged into, if any (an existing name merges)."""
        into = next((n for n in ep["dataset"]()["labels"] if n.casefold() == str(new).strip().casefold()
                     and n.casefold() != str(old).casefold()), None)
        return ep["rename_label"](old, new), into, old, new

    def renamed(result) -> tuple:
        """The new summary everywhere, the rename fields emptied (the old name is gone), what happened."""
        summary, into, old, new = result
        said = (f"renamed '{literal(old)}': merged into the existing label '{literal(into)}'" if into
                else f"renamed '{literal(old)}' to '{literal(str(new).strip())}'")
        return (*emptied(summary, ren_old), said, "")

    def merged(summary) -> tuple:
        """The new summary everywhere, the merge fields emptied (their labels are gone), what happened."""
        return (*emptied(summary, merge_src, []), "merged", "")

    def failed(message: str, *_) -> tuple:
        """A failed edit changes nothing on the tab but its message line (nor the field after it)."""
        return (*unchanged, error_text(message), gr.update())

    rename_event = handler(rename, prepare=picked, present=renamed, error=failed)
    rename_event.endpoint = ep["rename_label"]  # the one service operation it goes through
    ren_btn.click(rename_event, [ren_old, ren_new], [*out, msg, ren_new], api_name=False, show_progress_on=msg)
    merge_btn.click(handler(ep["merge_labels"], present=merged, error=failed),
                    [merge_src, merge_into], [*out, msg, merge_into], api_name=False, show_progress_on=msg)
    def confirmed(label, sure):
        if not label:
            raise user_error("pick a label first")
        if not sure:
            images = ep["dataset"]()["labels"].get(label, {})
            raise user_error(f"tick 'Yes, remove it from every image' to delete {label!r} "
                           f"({images.get('positive', 0)} image(s) present, {images.get('negative', 0)} not present)")
        return (label,)

    def delete(label) -> tuple:
        """The new summary everywhere, the picker emptied (its label is gone), what happened."""
        return (*emptied(ep["delete_label"](label), del_label), f"deleted '{literal(label)}'", False)

    delete_event = handler(delete, prepare=confirmed, error=failed)
    delete_event.endpoint = ep["delete_label"]
    del_btn.click(delete_event, [del_label, del_confirm], [*out, msg, del_confirm], api_name=False,
                  show_progress_on=msg)


def _wire_import(ep: dict, c: SimpleNamespace) -> None:
    """Label files (and their images) in; what each file held and got on the message line."""
    out, msg, imp_btn, imp_file = c.out, c.msg, c.imp_btn, c.imp_file
    unchanged = tuple(gr.update() for _ in out)

    def imported(r: dict) -> tuple:
        msg = f"imported tags for {r['imported']} image(s); {r['images_added']} new image(s)"
        per_file = bool(r.get("boxes") or any("box" in m for m in r.get("messages", [])))
        if per_file:  # what each box file held and got, ambiguous names included
            msg = f"imported tags or boxes for {r['imported']} image(s) ({r['boxes']} box(es)); " \
                  f"{r['images_added']} new image(s). " + " ".join(map(literal, r["messages"]))
        if r["missing"]:
            msg += f"; {len(r['missing'])} not found: " + ", ".join(map(literal, r["missing"][:10])) + ("…" if len(r["missing"]) > 10 else "")
        if r.get("ambiguous") and not per_file:
            names = list(dict.fromkeys(r["ambiguous"]))
            msg += (f"; {len(r['ambiguous'])} left untagged, since several images have that name (give its folder, "
                    "as in the zip or folder): " + ", ".join(map(literal, names[:5])) + ("…" if len(names) > 5 else ""))
        if r["skipped"]:
            msg += f"; {len(r['skipped'])} unreadable: " + "; ".join(map(literal, r["skipped"][:5]))
        return (msg, *_present(ep["dataset"]()))

    # A refused file's reason stays on the message line (a toast was gone in seconds, leaving "Error").
    imp_btn.click(handler(ep["import_labels"], present=imported, error=lambda m, *_: (error_text(m), *unchanged)),
                  imp_file, [msg, *out], api_name=False, show_progress_on=msg)
    c.api_btn.click(handler(ep["import_labels"], present=imported), c.api_files, [msg, *out], api_name="import_labels")


def _wire_export(ep: dict, c: SimpleNamespace) -> None:
    """An export file out, with a progress bar while the model runs over the images."""
    msg, exp_btn, exp_fmt, exp_images, exp_file = c.msg, c.exp_btn, c.exp_fmt, c.exp_images, c.exp_file

    def export(fmt, with_images, progress=gr.Progress()):
        """The detections export runs the model on every image: a progress bar per image."""
        def per_image(done: int, total: int):
            progress((done, total), desc="detecting", unit="images")

        def written(path: str) -> tuple:  # said on the line too: the file alone appeared far below it
            size = Path(path).stat().st_size
            return path, f"exported {literal(Path(path).name)} ({size / 2**20:.1f} MB): download it from the Export box"

        run = handler(functools.partial(ep["export_labels"], progress=per_image), present=written,
                      error=lambda m, *_: (gr.update(), error_text(m)))
        return run(fmt, bool(with_images))

    export.endpoint = ep["export_labels"]
    exp_btn.click(export, [exp_fmt, exp_images], [exp_file, msg], api_name=False, show_progress_on=msg)
