"""Tag: add images, walk the queue, mark labels present / not present, accept suggestions."""

from __future__ import annotations

import gradio as gr

from .common import handler


def allows_server_folders() -> bool:
    """Reading server folders is for local use: on by default unless the app is served publicly."""
    import os

    return os.environ.get("APP_ALLOW_SERVER_FOLDERS", "1") == "1"


def _present_view(view: dict) -> tuple:
    """tag_view -> (image, status, present dropdown, absent dropdown, index, hash)."""
    labels, img = view["labels"], view["image"]
    if img is None:
        return (None, "No images yet: upload some above.", gr.update(choices=labels, value=[]),
                gr.update(choices=labels, value=[]), 0, "")
    status = (f"**Image {view['index'] + 1} / {view['count']}** · tagged {view['tagged']} / {view['count']} · "
              f"`{img['name']}`")
    return (img["path"], status, gr.update(choices=labels, value=img["positives"]),
            gr.update(choices=labels, value=img["negatives"]), view["index"], img["hash"])


def build(ep: dict, vocabulary: gr.Textbox) -> dict:
    with gr.Accordion("Add images", open=True):
        with gr.Row():
            upload = gr.File(file_count="multiple", file_types=["image", ".zip"], label="Images or a .zip",
                             elem_id="tag-upload")
            with gr.Column():
                folder = gr.Textbox(label="Folder on this machine", visible=allows_server_folders(),
                                    placeholder="/path/to/photos")
                folder_btn = gr.Button("Add folder", visible=allows_server_folders())
        upload_msg = gr.Markdown()
    with gr.Row():
        with gr.Column(scale=3):
            image = gr.Image(label="Image", interactive=False, elem_id="tag-image")
            with gr.Row():
                prev_btn = gr.Button("◀ Previous", elem_id="tag-prev")
                next_untagged = gr.Button("Next untagged")
                next_btn = gr.Button("Next ▶", elem_id="tag-next")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="tag-status")
            positives = gr.Dropdown([], multiselect=True, allow_custom_value=True,
                                    label="Present (type a new name and press Enter)", elem_id="tag-positives")
            negatives = gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Not present (optional)")
            suggest_btn = gr.Button("Suggest from the current model")
            suggestions = gr.CheckboxGroup([], label="Suggestions (check to accept)")
            accept_btn = gr.Button("Add checked suggestions")
            suggest_msg = gr.Markdown()
    index = gr.State(0)
    current = gr.Textbox(visible=False)
    view_out = [image, status, positives, negatives, index, current]
    view = ep["tag_view"]

    def added(result: dict) -> tuple:
        msg = f"added {len(result['added'])} image(s)"
        if result["skipped"]:
            msg += f"; skipped {len(result['skipped'])}: " + "; ".join(result["skipped"][:5])
        return (msg, *_present_view(view(ep["first_untagged"]())))

    upload.upload(handler(ep["add_images"], present=added), upload, [upload_msg, *view_out], api_name="add_images")
    folder_btn.click(handler(ep["add_folder"], present=added), folder, [upload_msg, *view_out], api_name=False)
    prev_btn.click(handler(view, present=_present_view, prepare=lambda i: (i - 1,)), index, view_out, api_name=False)
    next_btn.click(handler(view, present=_present_view, prepare=lambda i: (i + 1,)), index, view_out, api_name=False)
    next_untagged.click(handler(ep["first_untagged"], present=lambda i: _present_view(view(i))), None, view_out,
                        api_name=False)

    def save(image_hash, pos, neg, index):
        """Saved on every change; only the status line is returned (re-setting the dropdowns would
        fire another change). A change that merely mirrors the store (navigation) writes nothing."""
        pos, neg = pos or [], neg or []
        if image_hash:
            stored = view(index)["image"]
            if stored and stored["hash"] == image_hash and (sorted(pos), sorted(neg)) != (
                    sorted(stored["positives"]), sorted(stored["negatives"])):
                ep["tag"](image_hash, pos, neg)
        return index

    save_handler = handler(save, present=lambda i: _present_view(view(i))[1])
    save_handler.endpoint = ep["tag"]
    for dropdown in (positives, negatives):
        dropdown.change(save_handler, [current, positives, negatives, index], status, api_name=False,
                        show_progress="hidden")

    def need_image(image_hash, vocab):
        if not image_hash:
            raise gr.Error("no image selected")
        return image_hash, vocab

    suggest_btn.click(handler(ep["suggest"], prepare=need_image,
                              present=lambda names: (gr.update(choices=names, value=[]),
                                                     f"{len(names)} suggestion(s)" if names else "nothing detected")),
                      [current, vocabulary], [suggestions, suggest_msg], api_name=False)

    def accept(image_hash, pos, checked, neg, index):
        merged = list(dict.fromkeys([*(pos or []), *(checked or [])]))
        if image_hash:
            ep["tag"](image_hash, merged, [n for n in neg or [] if n not in merged])
        return index

    accept_handler = handler(accept,
                             present=lambda i: (*_present_view(view(i)), gr.update(choices=[], value=[])))
    accept_handler.endpoint = ep["tag"]
    accept_btn.click(accept_handler, [current, positives, suggestions, negatives, index], [*view_out, suggestions],
                     api_name=False)
    refresh = handler(view, present=_present_view)
    return {"refresh": (refresh, [index], view_out), "view_at": lambda i: _present_view(view(i))}
