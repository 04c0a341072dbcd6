"""Tag: add images, walk the queue, mark labels present / not present, accept suggestions."""

from __future__ import annotations

import gradio as gr

from .common import error_text, handler, tab_message


def _status(view: dict) -> str:
    img = view["image"]
    if img is None:
        return "No images yet: upload some above."
    return (f"**Image {view['index'] + 1} / {view['count']}** · tagged {view['tagged']} / {view['count']} · "
            f"`{img['name']}`")


def _shown(view: dict) -> dict:
    """What the editor shows, so a change is sent as the tags added and removed since (operations,
    not a replacement: another person's concurrent edits of the same image survive)."""
    img = view["image"] or {}
    return {"hash": img.get("hash", ""), "positives": img.get("positives", []), "negatives": img.get("negatives", [])}


def _no_suggestions() -> tuple:
    """(suggestions, image they are for): none; suggestions belong to one image."""
    return gr.update(choices=[], value=[], label="Suggestions (check to accept)"), ""


def build(ep: dict, server_folders: bool) -> dict:
    with gr.Accordion("Add images", open=True), gr.Row():
        upload = gr.File(file_count="multiple", file_types=["image", ".zip"], label="Images or a .zip",
                         elem_id="tag-upload")
        with gr.Column():
            folder = gr.Textbox(label="Folder on the server (APP_ALLOWED_DIRS)", visible=server_folders,
                                placeholder="/path/to/photos")
            folder_btn = gr.Button("Add folder", visible=server_folders)
    with gr.Row():
        with gr.Column(scale=3):
            image = gr.Image(label="Image", interactive=False, elem_id="tag-image")
            with gr.Row():
                prev_btn = gr.Button("◀ Previous", elem_id="tag-prev")
                next_untagged = gr.Button("Next untagged")
                next_btn = gr.Button("Next ▶", elem_id="tag-next")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="tag-status")
            msg = tab_message("tag-msg")
            positives = gr.Dropdown([], multiselect=True, allow_custom_value=True,
                                    label="Present (type a new name and press Enter)", elem_id="tag-positives")
            negatives = gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Not present (optional)",
                                    elem_id="tag-negatives")
            suggest_vocab = gr.Textbox(label="Suggest from these names (empty = the dataset's labels)",
                                       elem_id="tag-suggest-vocabulary")
            suggest_btn = gr.Button("Suggest from the current model", elem_id="tag-suggest")
            suggestions = gr.CheckboxGroup([], label="Suggestions (check to accept)", elem_id="tag-suggestions")
            accept_btn = gr.Button("Add checked suggestions", elem_id="tag-accept")
    index = gr.State(0)
    current = gr.Textbox(visible=False)
    shown = gr.State({})
    suggested_for = gr.State("")  # the image the suggestions were made for
    view_out = [image, status, positives, negatives, index, current, shown, suggestions, suggested_for,
                suggest_vocab]
    view = ep["tag_view"]

    def _present_view(v: dict) -> tuple:
        """tag_view -> (image, status, present, not present, index, hash, shown tags, suggestions,
        their image, suggestion names' hint). Moving to an image clears the suggestions."""
        img = v["image"]
        picture = ep["image_preview"](img["hash"]) if img else None
        hint = ", ".join(v["labels"][:30]) + ("…" if len(v["labels"]) > 30 else "")
        return (picture, _status(v), gr.update(choices=v["labels"], value=img["positives"] if img else []),
                gr.update(choices=v["labels"], value=img["negatives"] if img else []), v["index"],
                img["hash"] if img else "", _shown(v), *_no_suggestions(),
                gr.update(placeholder=hint or "no labels yet: type names, e.g. mug, plate"))

    def _same_image(out: list) -> list:
        """A view of the image already shown: picture and suggestions are kept."""
        out[0] = out[7] = out[8] = gr.update()
        return out

    def added(result: dict) -> tuple:
        text = f"added {len(result['added'])} image(s)"
        if result["skipped"]:
            text += f"; skipped {len(result['skipped'])}: " + "; ".join(result["skipped"][:5])
        return (text, *_present_view(view(ep["first_untagged"]())))

    upload.upload(handler(ep["add_images"], present=added), upload, [msg, *view_out], api_name="add_images",
                  show_progress_on=msg)
    folder_btn.click(handler(ep["add_folder"], present=added), folder, [msg, *view_out], api_name=False,
                     show_progress_on=msg)
    prev_btn.click(handler(view, present=_present_view, prepare=lambda i: (i - 1,)), index, view_out, api_name=False,
                   show_progress_on=msg)
    next_btn.click(handler(view, present=_present_view, prepare=lambda i: (i + 1,)), index, view_out, api_name=False,
                   show_progress_on=msg)
    next_untagged.click(handler(ep["first_untagged"], present=lambda i: _present_view(view(i))), None, view_out,
                        api_name=False, show_progress_on=msg)

    def save(image_hash, pos, neg, index, before):
        """Saved on every change as the difference to what was shown (add / remove operations)."""
        pos, neg = list(pos or []), list(neg or [])
        if image_hash and (before or {}).get("hash") == image_hash:
            add_pos = [n for n in pos if n not in before["positives"]]
            add_neg = [n for n in neg if n not in before["negatives"]]
            removed = [n for n in before["positives"] if n not in pos and n not in add_neg] + \
                      [n for n in before["negatives"] if n not in neg and n not in add_pos]
            if removed:
                ep["untag"](image_hash, removed)
            if add_pos or add_neg:
                ep["tag"](image_hash, add_pos, add_neg)
        return index, pos, neg

    def saved(result) -> tuple:
        """The editor as stored. The dropdowns are re-set only where the store differs from what
        they hold (a name that switched side): re-setting them fires another change."""
        index, pos, neg = result
        out = list(_present_view(view(index)))
        stored = out[6]
        if set(stored["positives"]) == set(pos) and set(stored["negatives"]) == set(neg):
            out[2] = out[3] = gr.update()
        return (*_same_image(out), "")

    def refused(message, image_hash, pos, neg, index, before):
        """A refused edit (e.g. a name too long): the editor goes back to the stored tags, so no
        chip stays that was not saved."""
        return (*_same_image(list(_present_view(view(index)))), error_text(message))

    save_event = handler(save, present=saved, error=refused)
    save_event.endpoint = ep["tag"]
    for dropdown in (positives, negatives):
        dropdown.change(save_event, [current, positives, negatives, index, shown], [*view_out, msg], api_name=False,
                        show_progress="hidden")

    def suggest(image_hash, vocab, index):
        """Suggestions for the image shown, labelled with its name; they belong to that image."""
        if not image_hash:
            raise gr.Error("no image selected")
        names = ep["suggest"](image_hash, vocab)
        name = (view(index)["image"] or {}).get("name", "")
        return (gr.update(choices=names, value=[], label=f"Suggestions for {name} (check to accept)"), image_hash,
                f"{len(names)} suggestion(s)" if names else "nothing detected")

    suggest_handler = handler(suggest)
    suggest_handler.endpoint = ep["suggest"]
    suggest_btn.click(suggest_handler, [current, suggest_vocab, index], [suggestions, suggested_for, msg],
                      api_name=False, show_progress_on=msg)

    def accept(image_hash, checked, for_image, index):
        checked = list(checked or [])
        if checked and for_image != image_hash:
            raise gr.Error("these suggestions were made for another image: press Suggest again")
        if image_hash and checked:
            ep["tag"](image_hash, checked, [])
        return index, checked

    accept_handler = handler(accept, present=lambda r: (*_present_view(view(r[0])),
                                                        f"added {', '.join(r[1])}" if r[1] else "nothing checked"))
    accept_handler.endpoint = ep["tag"]
    accept_btn.click(accept_handler, [current, suggestions, suggested_for, index], [*view_out, msg],
                     api_name=False, show_progress_on=msg)
    refresh = handler(view, present=_present_view)
    return {"refresh": (refresh, [index], view_out), "view_at": lambda i: _present_view(view(i))}
