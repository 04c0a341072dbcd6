"""Tag: add images, walk the queue, mark labels present / not present, accept suggestions."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..markdown import literal
from .common import error_text, handler, on_line, preview_file, tab_message, user_error

HOTKEYS = 9  # number keys 1-9 toggle the first nine labels created as present (`tag_view`'s `keys`)
GONE = "gone"  # in `store_mark`: the image shown was deleted on another page
TAG_QUEUE = "tag-editor"  # one queue for the editor's events: a save finishes before the next image shows

# The editor's quick events run in order, every one (a key pressed twice counts twice): a save
# lands before ▶. One queue for the whole server, so only quick store operations join it
# (uploads and Suggest, which can take long, do not).
QUEUED = {"concurrency_id": TAG_QUEUE, "concurrency_limit": 1, "trigger_mode": "multiple"}

# Labelling keys, active only while the Tag tab is shown (see the legend, `_keys`):
# 1-9 toggle the first labels, Enter / Ctrl+Enter next image (Ctrl+Enter also from the tag box,
# after the typed name is added), arrows move, u next untagged, z undo, t focuses the tag box,
# Esc leaves it.
KEYBOARD_SCRIPT = """\
document.addEventListener('keydown', (e) => {
  const tab = document.getElementById('tag-image');
  if (!tab || !tab.checkVisibility()) return;
  const t = e.target;
  const typing = t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable;
  const click = (id, delay) => {
    const b = document.getElementById(id);
    if (!b) return;
    e.preventDefault();
    delay ? setTimeout(() => b.click(), delay) : b.click();
  };
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
    if (typing) { t.blur(); return click('tag-next', 300); }
    return click('tag-next');
  }
  if (typing) { if (e.key === 'Escape') t.blur(); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === 'Enter' && t.tagName !== 'BUTTON') return click('tag-next');
  if (e.key === 'ArrowRight') return click('tag-next');
  if (e.key === 'ArrowLeft') return click('tag-prev');
  if (e.key === 'u') return click('tag-next-untagged');
  if (e.key === 'z') return click('tag-undo');
  if (/^[1-9]$/.test(e.key)) return click('tag-key-' + e.key);
  if (e.key === 't') {
    const box = document.querySelector('#tag-positives input');
    if (box) { e.preventDefault(); box.focus(); }
  }
});
"""


def _keys(keyed: list[str]) -> str:
    """The key legend: the labels the number keys toggle, in the order they were created (`tag_view`'s
    `keys`; names escaped: they are user text)."""
    numbers = " · ".join(f"**{i}** {literal(n)}" for i, n in enumerate(keyed[:HOTKEYS], 1))
    return (f"Keys: {numbers or 'tag an image to get number keys'} · **Enter** / **Ctrl+Enter** next · "
            "**←/→** previous / next · **u** next untagged · **z** undo · **t** tag box (**Esc** leaves it)")


def _choices(v: dict) -> list[tuple[str, str]]:
    """The label chips' (shown, value) choices: a label with a number key shows it ("2 · cup")."""
    key = {n: i for i, n in enumerate(v["keys"][:HOTKEYS], 1)}
    return [(f"{key[n]} · {n}" if n in key else n, n) for n in v["labels"]]


def _status(view: dict) -> str:
    img = view["image"]
    if img is None and view.get("gone"):
        return "This image was deleted on another page: ◀ / ▶ go on."
    if img is None:
        return "No image matches: show another set." if view["count"] else "No images yet: upload some above."
    return (f"**Image {view['index'] + 1} / {view['count']}** · tagged {view['tagged']} / {view['count']} · "
            f"<code>{literal(img['name'])}</code>")


def _shown(view: dict) -> dict:
    """What the editor shows, so a change is sent as the tags added and removed since (operations,
    not a replacement: another person's concurrent edits of the same image survive)."""
    img = view["image"] or {}
    return {"hash": img.get("hash", ""), "positives": img.get("positives", []), "negatives": img.get("negatives", [])}


def _filters(labels: list[str], suggest_names: list[str] = ()) -> list[tuple[str, str]]:
    """The queue filters (`AppService.tag_view`'s `show`), as (shown, value) choices: one per label
    and one per name of the Suggest vocabulary (the images to review for it)."""
    return [("all images", "all"), ("untagged", "untagged"), *((f"with label: {n}", f"label:{n}") for n in labels),
            *((f"with suggestion: {n}", f"suggestion:{n}") for n in suggest_names)]


def _suggesting(show: str) -> bool:
    return (show or "").strip().startswith("suggestion:")


def _matching(v: dict, index: int) -> str:
    """How many images the filter lets through, and whether the image at `index` is one of them."""
    if v["show"] == "all":
        return f"all {v['count']} images"
    so_far = ""
    if v.get("pending") and v.get("running"):  # the pass runs in the background: what is known so far
        so_far = f"suggestions: {v['count'] - v['pending']} of {v['count']} images checked, still running · "
        if not v["matches"]:
            return f"{so_far}none match yet"
    elif v.get("pending"):
        failed = f" (the last pass stopped: {literal(v['suggestion_error'])})" if v.get("suggestion_error") else ""
        return (f"suggestions not found yet for {v['pending']} of {v['count']} images (new images, another model "
                f"or other names){failed}: ◀ / ▶ find them")
    if not v["matches"]:
        return f"none of {v['count']} match"
    text = f"{so_far}{v['matches']} of {v['count']} match" + (" so far" if so_far else "")
    if v["index"] == index and v["image"]:
        return f"{text} · this is {v['position']} of {v['matches']}"
    return f"{text} · not this image (◀ / ▶ go to those that do)"


def _end_of_queue(v: dict, step: int, here: int) -> str:
    """◀ / ▶ that stayed on the image shown: it is the first / last of those shown (they seemed to do nothing)."""
    if not step or v["image"] is None or v["index"] != here:
        return ""
    shown = "" if v["show"] == "all" else " of those shown"
    return f"this is the {'first' if step < 0 else 'last'} image{shown}"


def _no_suggestions() -> tuple:
    """(suggestions, image they are for): none; suggestions belong to one image."""
    return gr.update(choices=[], value=[], label="Suggestions (check to accept)"), ""


def build(ep: dict, server_folders: bool) -> dict:
    """The tab: its layout, the views of the image shown, then its events by what they do. The
    number keys' script is `KEYBOARD_SCRIPT` (in the page's head, `common.launch_options`)."""
    c = _layout(server_folders)
    views = _views(ep, c)
    _wire_uploads(ep, c, views)
    choices = _wire_queue(ep, c, views)
    _wire_next_untagged(ep, c, views)
    _wire_number_keys(ep, c, views)
    _wire_save(ep, c, views)
    _wire_suggestions(ep, c, views)
    _wire_undo(ep, c, views)
    _wire_delete(ep, c, views)
    _wire_sync(ep, c, views)
    return _exports(ep, c, views, choices)


def _layout(server_folders: bool) -> SimpleNamespace:
    """Every component of the tab, top to bottom, by its name (no events here)."""
    # open while there is nothing to tag; a page opened on stored images starts with it closed (on a
    # phone it filled the first screen, and the image to tag was below it)
    with gr.Accordion("Add images", open=True) as add_images, gr.Row():
        upload = gr.File(file_count="multiple", file_types=["image", ".zip"], label="Images or a .zip",
                         elem_id="tag-upload")
        with gr.Column():
            folder = gr.Textbox(label="Folder on the server (APP_ALLOWED_DIRS)", visible=server_folders,
                                placeholder="/path/to/photos", elem_id="tag-folder")
            folder_btn = gr.Button("Add folder", visible=server_folders, elem_id="tag-folder-button")
    with gr.Row():
        with gr.Column(scale=3):
            image = gr.Image(label="Image", interactive=False, elem_id="tag-image")
            with gr.Row(equal_height=True):
                show = gr.Dropdown(_filters([]), value="all", label="Show (◀ / ▶ and Enter go through these)",
                                   allow_custom_value=True, elem_id="tag-show", scale=2)
                show_count = gr.Markdown(elem_id="tag-show-count")
            with gr.Row():
                prev_btn = gr.Button("◀ Previous", elem_id="tag-prev")
                next_untagged = gr.Button("Next untagged", elem_id="tag-next-untagged")
                next_btn = gr.Button("Next ▶", elem_id="tag-next")
                undo_btn = gr.Button("↶ Undo last change", elem_id="tag-undo")
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
            with gr.Accordion("Delete this image", open=False, elem_id="tag-delete-box"):
                del_confirm = gr.Checkbox(False, label="Yes, delete it with its tags and boxes",
                                          elem_id="tag-delete-confirm")
                del_btn = gr.Button("Delete this image", variant="stop", elem_id="tag-delete")
    keys = gr.Markdown(elem_id="tag-keys")
    hotkeys = [gr.Button(str(i), elem_id=f"tag-key-{i}", elem_classes=["hotkey"]) for i in range(1, HOTKEYS + 1)]
    # What the page shows, kept in the page (not in server-side state) so every event carries one
    # consistent snapshot: the image, its place and the tags the editor showed when the person acted.
    index = gr.Number(0, precision=0, visible=False)
    current = gr.Textbox(visible=False)
    shown = gr.JSON({}, visible=False)
    key_names = gr.JSON([], visible=False)  # the labels the legend gives keys 1-9, as the page shows it
    # What the page showed last of the image's tags, kept on the server: the editor's events run in
    # order, so a key reads what the events before it left (a key pressed twice counts twice), and
    # a tag another page changed, not shown here yet, is toggled as the person sees it.
    seen_tags = gr.State({})
    # The store's revision and the image shown, as the page's watcher last read them: any change of
    # the store (a rename, a merge, a tag on another page) changes it, and the editor then catches up
    # (`_wire_sync`).
    store_mark = gr.Textbox(visible=False, elem_id="tag-stored")
    suggested_for = gr.State("")  # the image the suggestions were made for
    last_edit = gr.State(None)  # {"hash", "touched": names, "before": their tags before} for Undo
    # `shown` last: a change fired while a response is being applied then either still sees the
    # old `shown` (another image's hash: nothing is saved) or sees everything new.
    view_out = [index, current, image, status, positives, negatives, suggestions, suggested_for, suggest_vocab,
                keys, key_names, seen_tags, show, shown]
    outputs = [*view_out, msg, last_edit]
    return SimpleNamespace(**locals())


def _views(ep: dict, c: SimpleNamespace) -> SimpleNamespace:
    """What the editor shows of an image (tag_view -> component values), shared by the events."""
    index, current, image, status, positives = c.index, c.current, c.image, c.status, c.positives
    negatives, suggestions, suggested_for = c.negatives, c.suggestions, c.suggested_for
    suggest_vocab, keys, shown, view_out, msg = c.suggest_vocab, c.keys, c.shown, c.view_out, c.msg
    key_names = c.key_names

    view = ep["tag_view"]

    def _editor(v: dict) -> dict:
        """The view of the image already shown: its status, tags and the key legend. Events that
        edit the image shown return only these, so none of them can move the page to another image."""
        img = v["image"]
        hint = ", ".join(v["labels"][:30]) + ("…" if len(v["labels"]) > 30 else "")
        return {status: _status(v),
                positives: gr.update(choices=_choices(v), value=img["positives"] if img else []),
                negatives: gr.update(choices=_choices(v), value=img["negatives"] if img else []),
                suggest_vocab: gr.update(placeholder=hint or "no labels yet: type names, e.g. mug, bottle"),
                keys: _keys(v["keys"]), key_names: v["keys"][:HOTKEYS], c.seen_tags: _shown(v), shown: _shown(v)}

    def _present_view(v: dict) -> dict:
        """tag_view -> every component of the editor, for the image at v["index"]. Moving to an
        image clears the suggestions (they belong to one image)."""
        img = v["image"]
        no_suggestions, for_image = _no_suggestions()
        return {index: v["index"], current: img["hash"] if img else "",
                image: preview_file(ep, img["hash"]) if img else None,
                suggestions: no_suggestions, suggested_for: for_image, **_editor(v)}

    def as_tuple(values: dict) -> tuple:
        return tuple(values.get(c, gr.update()) for c in view_out)

    def _edit(image_hash: str, touched: list[str], before: dict | None = None) -> dict:
        """What Undo needs: the names an edit touches and their tags before it."""
        if before is None:
            before = view(_index_of(image_hash) or 0)["image"]
        return {"hash": image_hash, "touched": list(touched),
                "before": {side: [n for n in touched if n in before[side]] for side in ("positives", "negatives")}}

    def settled(edit: dict, stored: dict) -> dict:
        """`edit` with the sides its names are on in `stored` (the image's tags as the editor
        shows them once it is saved: `after`): Undo puts them back only while they still are (it
        had erased another page's newer edit of them)."""
        return {**edit, "after": {side: [n for n in edit["touched"] if n in stored.get(side, [])]
                                  for side in ("positives", "negatives")}}

    def _index_of(image_hash: str) -> int | None:
        return next((i for i, r in enumerate(ep["images"]()) if r["hash"] == image_hash), None)

    def edited(image_hash: str, text: str | None = None) -> dict:
        """The editor of the image shown, as stored, and `text` on the message line (None: the
        line keeps what it says, e.g. the upload report while the editor settles). With no image
        shown (a filter that matches none) the editor stays empty: it had shown the first image's
        tags beside an empty picture, and a tag typed there went nowhere."""
        at = _index_of(image_hash) if image_hash else None
        v = view(at) if at is not None else {**view(0), "image": None, "gone": bool(image_hash)}
        return {**({} if text is None else {msg: text}), **_editor(v)}

    return SimpleNamespace(_editor=_editor, _present_view=_present_view, as_tuple=as_tuple, _edit=_edit,
                           _index_of=_index_of, edited=edited, settled=settled)


def _emptied() -> None:
    """Pure UI: the upload box empties once its files are in the store (they stayed listed, and the
    next upload sent them all again: "8 duplicate(s)" for a zip of 2)."""
    return None


_emptied.ui_only = True


def _wire_uploads(ep: dict, c: SimpleNamespace, views: SimpleNamespace) -> None:
    """Images in (files, zips, a server folder): the queue then shows the first untagged one."""
    upload, folder, folder_btn, msg, outputs = c.upload, c.folder, c.folder_btn, c.msg, c.outputs
    _present_view = views._present_view
    view = ep["tag_view"]

    def added(result: dict) -> dict:
        text = f"added {len(result['new'])} new image(s)"
        if result["duplicates"]:
            names = ", ".join(map(literal, result["duplicates"][:5])) + ("…" if len(result["duplicates"]) > 5 else "")
            text += f"; {len(result['duplicates'])} duplicate(s) already here: {names}"
        if result["skipped"]:
            text += f"; skipped {len(result['skipped'])}: " + "; ".join(map(literal, result["skipped"][:5]))
        return {msg: text, **_present_view(view(ep["first_untagged"]()))}

    upload.upload(handler(ep["add_images"], present=added), upload, outputs, api_name="add_images",
                  show_progress_on=msg).then(_emptied, None, upload, api_name=False, show_progress="hidden")
    folder_btn.click(handler(ep["add_folder"], present=added, error=on_line(outputs, msg)), folder, outputs,
                     api_name=False, show_progress_on=msg)


def _wire_queue(ep: dict, c: SimpleNamespace, views: SimpleNamespace):
    """◀ / ▶ and the Show filter, the count of images it lets through and the filters offered;
    returns the filters' refresh (`choices`)."""
    index, show, show_count, suggest_vocab = c.index, c.show, c.show_count, c.suggest_vocab
    prev_btn, next_btn, shown, status, msg = c.prev_btn, c.next_btn, c.shown, c.status, c.msg
    outputs = c.outputs
    _present_view = views._present_view
    view = ep["tag_view"]

    def go(i: int, s: str, vocab: str, backward: bool, here: int) -> dict:
        """The queue's image at `i`. A "with suggestion" filter starts the model on the images it
        has not looked at yet under these names, in the background (once; never waited for): the
        queue is what it has found so far, and while none of those match the image shown stays."""
        if _suggesting(s):
            ep["start_suggestions"](vocab)
        v = view(i, s, backward, vocab)
        if v["image"] is None and v.get("running"):
            return view(here, "all", False, vocab)
        return v

    def moving(step: int, backward: bool = False):
        """◀ (-1) / ▶ (+1) / the filter chosen (0): errors on the message line."""

        def move(i, s, vocab):
            run = handler(go, prepare=lambda i, s, vocab: (int(i or 0) + step, s, vocab, backward, int(i or 0)),
                          present=lambda v: {msg: _end_of_queue(v, step, int(i or 0)), **_present_view(v)},
                          error=lambda m, *_: {msg: error_text(m)})
            return run(i, s, vocab)

        move.endpoint = view
        return move

    # The count follows every change of the image shown, its tags, the queue's size, the filter or
    # the Suggest names; and after every move (a filter chosen on the image shown changes none).
    counter = handler(view, prepare=lambda i, s, vocab: (int(i or 0), s, False, vocab), present=None,
                      error=lambda m, *_: error_text(m))

    # While a suggestion pass runs, the count (with its progress) is refreshed every second.
    ticker = gr.Timer(1.0, active=False)

    def count(i, s, vocab):
        v = counter(i, s, vocab)
        if not isinstance(v, dict):
            return v, gr.Timer(active=False)
        return _matching(v, int(i or 0)), gr.Timer(active=bool(v.get("running")))

    count.endpoint = view
    counted = {"fn": count, "inputs": [index, show, suggest_vocab], "outputs": [show_count, ticker],
               "api_name": False, "show_progress": "hidden", "trigger_mode": "always_last"}
    ticker.tick(**counted)
    # ◀ / ▶ (and the keys) go to the previous / next image the filter shows.
    moves = [index, show, suggest_vocab]
    prev_btn.click(moving(-1, backward=True), moves, outputs, api_name=False, show_progress_on=msg,
                   **QUEUED).then(**counted)
    next_btn.click(moving(+1), moves, outputs, api_name=False, show_progress_on=msg, **QUEUED).then(**counted)
    # Choosing a filter stays on the image shown when it matches, else goes to the next that does.
    show.input(moving(0), moves, outputs, api_name=False, show_progress_on=msg, **QUEUED).then(**counted)
    gr.on([shown.change, status.change, show.change, suggest_vocab.change], **counted)

    # The filters offered: the labels and the Suggest names, as they are now. A filter chosen for a
    # label that another page renamed or deleted goes back to all images, and says why (it had
    # matched none: an empty picture, and ◀ / ▶ silent).
    def filters(vocab, chosen):
        v = view(0, "all", False, vocab)
        offered = _filters(v["labels"], v["suggest_names"])
        values = {value.casefold(): value for _, value in offered}
        if (chosen or "all").startswith("label:") and chosen not in values.values():
            if chosen.casefold() in values:  # renamed in case only: the same label
                return gr.update(choices=offered, value=values[chosen.casefold()]), gr.update()
            gone = chosen[len("label:"):]
            return (gr.update(choices=offered, value="all"),
                    f"the label {literal(gone)} is gone (renamed or deleted on another page): showing all images")
        return gr.update(choices=offered), gr.update()

    choices = handler(filters, error=lambda m, *_: (gr.update(), error_text(m)))
    choices.endpoint = view
    gr.on([shown.change, suggest_vocab.change], choices, [suggest_vocab, show], [show, msg], api_name=False,
          show_progress="hidden", trigger_mode="always_last")
    return choices


def _wire_next_untagged(ep: dict, c: SimpleNamespace, views: SimpleNamespace) -> None:
    """Next untagged: the first image with no tags."""
    next_untagged, msg, outputs = c.next_untagged, c.msg, c.outputs
    _present_view = views._present_view
    view = ep["tag_view"]

    def untagged(here) -> dict:
        """The next image with no tags after the one shown (from the start again past the last);
        where the one shown is the only one, or every image is tagged, says so (and stays)."""
        here = int(here or 0)
        rows = ep["images"]()
        waiting = [i for i, r in enumerate(rows) if not r["positives"] and not r["negatives"]]
        if not waiting:
            return {msg: f"all {len(rows)} images are tagged" if rows else "No images yet: upload some above."}
        target = next((i for i in waiting if i > here), waiting[0])
        if target == here:
            return {msg: "this is the only untagged image"}
        return {msg: "", **_present_view(view(target))}

    untagged_event = handler(untagged, error=lambda m, *_: {msg: error_text(m)})
    untagged_event.endpoint = ep["first_untagged"]
    next_untagged.click(untagged_event, c.index, outputs, api_name=False, show_progress_on=msg, **QUEUED)


def _wire_number_keys(ep: dict, c: SimpleNamespace, views: SimpleNamespace) -> None:
    """The buttons behind the number keys 1-9 (hidden; `KEYBOARD_SCRIPT` clicks them)."""
    hotkeys, current, msg, last_edit, outputs = c.hotkeys, c.current, c.msg, c.last_edit, c.outputs
    _edit, edited = views._edit, views.edited
    view = ep["tag_view"]

    def toggle(image_hash, shown_keys, seen, number):
        """Number key `number`: the label the legend shows at that place becomes present, or stops
        being present, as the page shows it (the legend's and the chips', not the store's: a label
        deleted on another page moved the others up, and the key removed the label after it; a tag
        added on another page and not shown yet was removed by a key meant to add it)."""
        if not image_hash:
            raise user_error("no image selected")
        shown_keys = list(shown_keys or [])
        if number > len(shown_keys):
            raise user_error(f"key {number}: there are only {len(shown_keys)} labels")
        name = shown_keys[number - 1]
        if name not in view(0)["labels"]:
            raise user_error(f"key {number}: '{name}' is no longer a label (renamed or deleted on another page); "
                             "the keys follow in a moment")
        edit = _edit(image_hash, [name])
        seen = seen if isinstance(seen, dict) and seen.get("hash") == image_hash else edit["before"]
        if name in seen["positives"]:
            ep["untag"](image_hash, [name])
            return image_hash, f"removed {literal(name)}", edit
        ep["tag"](image_hash, [name], [])
        return image_hash, f"added {literal(name)}", edit

    def toggled_view(result) -> dict:
        image_hash, said, edit = result
        out = edited(image_hash, said)
        return {**out, last_edit: views.settled(edit, out[c.shown])}

    for number, key in enumerate(hotkeys, 1):
        toggled = handler(toggle, prepare=lambda h, names, seen, n=number: (h, names, seen, n),
                          present=toggled_view,
                          error=lambda m, *_: {msg: error_text(m)})
        toggled.endpoint = ep["tag"]
        key.click(toggled, [current, c.key_names, c.seen_tags], outputs, api_name=False, show_progress="hidden",
                  **QUEUED)


def _still_shown(image_hash: str, seen) -> bool:
    """Whether the page still shows `image_hash`, by `seen_tags` (absent: assumed so). An event a
    change fires (the chips' save, the catch-up) carries the page as it was then, and can run after a
    move to another image queued before it (Enter or ← right after a number key): its answer redrew
    the editor of the image left (status and chips) beside the next one's picture."""
    return not isinstance(seen, dict) or not seen or seen.get("hash") == image_hash


def _operations(pos: list[str], neg: list[str], before: dict, stored: dict) -> tuple[list, list, list]:
    """(names to add as present, as not present, names to remove): the chips' change since
    `before`, less what the `stored` tags already hold (labels compare case-insensitively)."""
    held = {side: {n.casefold() for n in names} for side, names in stored.items()}
    add_pos = [n for n in pos if n not in before["positives"] and n.casefold() not in held["positives"]]
    add_neg = [n for n in neg if n not in before["negatives"] and n.casefold() not in held["negatives"]]
    removed = [n for n in before["positives"] if n not in pos and n not in add_neg and n.casefold() in held["positives"]] + \
              [n for n in before["negatives"] if n not in neg and n not in add_pos and n.casefold() in held["negatives"]]
    return add_pos, add_neg, removed


def _wire_save(ep: dict, c: SimpleNamespace, views: SimpleNamespace) -> None:
    """Every change of the Present / Not present chips is saved at once, as add / remove operations."""
    positives, negatives, current, shown, last_edit = c.positives, c.negatives, c.current, c.shown, c.last_edit
    outputs = c.outputs
    _edit, edited = views._edit, views.edited

    def save(image_hash, pos, neg, before, page_keys=None, seen=None):
        """Saved on every change as the difference to what was shown (add / remove operations),
        less what the store already holds: setting the chips (a catch-up, a move, another image)
        fires this change too, and its `before` can be a step behind the chips. `seen`: what the
        page shows now, as the events before this one left it (server-side; the other inputs are
        as they were when the change fired)."""
        pos, neg = list(pos or []), list(neg or [])
        here = _still_shown(image_hash, seen)
        if not image_hash and (pos or neg):
            raise user_error("no image is shown, so the tag was not saved: pick another set under Show")
        if not image_hash:
            return None
        if (before or {}).get("hash") != image_hash:
            # another image's chips beside this one (a view applied in parts, an answer after a later
            # move): nothing saved, the editor redrawn (it showed the image left; the next edit was lost)
            return (image_hash, pos, neg, None, "", page_keys, True) if here else None
        if (sorted(pos), sorted(neg)) == (sorted(before["positives"]), sorted(before["negatives"])):
            return None  # the chips as the page last set them (a name typed twice is not: it shows twice)
        add_pos, add_neg, removed = _operations(pos, neg, before, ep["image_tags"](image_hash))
        moved_names = [n for n in add_pos + add_neg if n in {*before["positives"], *before["negatives"]}]
        if moved_names:  # a chip shown before another page renamed or deleted its label: not brought back
            labels = {n.casefold() for n in ep["tag_view"](0)["labels"]}
            gone = [n for n in moved_names if n.casefold() not in labels]
            if gone:
                raise user_error(f"'{gone[0]}' is no longer a label (renamed or deleted on another page): "
                                 "the chips show the stored tags now")
        if removed:
            ep["untag"](image_hash, removed)
        if add_pos or add_neg:
            ep["tag"](image_hash, add_pos, add_neg)
        if removed or add_pos or add_neg:
            # a name picked on the other side leaves this one: said, since it happened unasked
            moved = [f"moved {literal(n)} to Not present" for n in add_neg if n in before["positives"]] + \
                    [f"moved {literal(n)} to Present" for n in add_pos if n in before["negatives"]]
            edit = _edit(image_hash, removed + add_pos + add_neg, before)
            return image_hash, pos, neg, edit, "; ".join(moved), page_keys, here
        return (image_hash, pos, neg, None, "", page_keys, here) if here else None  # the store held it already

    def saved(result) -> dict:
        """The editor as stored after an edit. The dropdowns are re-set only where the store
        differs from what they hold (a name that switched side): re-setting them fires another
        change. A change that leaves the chips as the page last set them changes nothing: it had set
        them to the store as read then, which fired two more saves, each a step behind under load,
        so a page fell further behind with every edit made elsewhere (catching up is `_wire_sync`'s)."""
        if result is None:
            return {c.msg: gr.update()}  # (an empty dict is read as one output value, not as no updates)
        image_hash, pos, neg, edit, moved, page_keys, here = result
        if not here:  # saved, but the page went on to another image meanwhile: its editor stays
            return {c.msg: moved or gr.update(), last_edit: views.settled(edit, ep["image_tags"](image_hash))}
        out = edited(image_hash, moved or ("" if edit else None))
        stored = out[shown]
        if edit:
            out[last_edit] = views.settled(edit, stored)
        if sorted(stored["positives"]) == sorted(pos) and sorted(stored["negatives"]) == sorted(neg):
            # only the choices, never the values, and only when the number keys changed (a new
            # label's chip shows its key)
            keep = out[c.key_names] == list(page_keys or [])
            out[positives] = gr.update() if keep else gr.update(choices=out[positives]["choices"])
            out[negatives] = gr.update() if keep else gr.update(choices=out[negatives]["choices"])
        return out

    def refused(message, image_hash, pos, neg, before, page_keys=None, seen=None):
        """A refused edit (e.g. a name too long): the editor goes back to the stored tags, so no
        chip stays that was not saved (the message alone once the page shows another image)."""
        if not _still_shown(image_hash, seen):
            return {c.msg: error_text(message)}
        return edited(image_hash, error_text(message))

    save_event = handler(save, present=saved, error=refused)
    save_event.endpoint = ep["tag"]
    for dropdown in (positives, negatives):
        dropdown.change(save_event, [current, positives, negatives, shown, c.key_names, c.seen_tags], outputs,
                        api_name=False,
                        show_progress="hidden", **QUEUED)


def _wire_suggestions(ep: dict, c: SimpleNamespace, views: SimpleNamespace) -> None:
    """Suggest names for the image shown from the current model; the checked ones become tags."""
    suggest_btn, accept_btn, suggestions = c.suggest_btn, c.accept_btn, c.suggestions
    suggested_for, suggest_vocab, current, index = c.suggested_for, c.suggest_vocab, c.current, c.index
    msg, last_edit, outputs = c.msg, c.last_edit, c.outputs
    _edit, edited, _index_of = views._edit, views.edited, views._index_of
    view = ep["tag_view"]

    def suggest(image_hash, vocab, i):
        """Suggestions for the image shown, labelled with its name; they belong to that image."""
        if not image_hash:
            raise user_error("no image selected")
        found = ep["suggest"](image_hash, vocab)
        img = view(_index_of(image_hash))["image"] or {}
        tagged = {n.casefold() for n in img.get("positives", []) + img.get("negatives", [])}
        names = [n for n in found if n.casefold() not in tagged]  # a tag the image has is no suggestion
        name = img.get("name", "")
        if names:
            said = f"{len(names)} suggestion(s)"
        elif found:
            said = f"the model found only names this image is already tagged with: {literal(', '.join(found))}"
        else:  # say which names were tried: the typed ones, or else the dataset's labels
            tried = ep["suggestion_progress"](vocab)["names"]
            shown = ", ".join(literal(n) for n in tried[:20]) + (f" (+{len(tried) - 20} more)" if len(tried) > 20 else "")
            said = f"nothing detected: the model found none of these names here: {shown}"
        return (gr.update(choices=names, value=[], label=f"Suggestions for {name} (check to accept)"), image_hash, said)

    suggest_handler = handler(suggest)
    suggest_handler.endpoint = ep["suggest"]
    suggest_btn.click(suggest_handler, [current, suggest_vocab, index], [suggestions, suggested_for, msg],
                      api_name=False, show_progress_on=msg)

    def accept(image_hash, checked, for_image):
        checked = list(checked or [])
        if checked and for_image != image_hash:
            raise user_error("these suggestions were made for another image: press Suggest again")
        edit = None
        if image_hash and checked:
            edit = _edit(image_hash, checked)
            ep["tag"](image_hash, checked, [])
        return image_hash, checked, edit

    def accepted(result) -> dict:
        image_hash, checked, edit = result
        no_suggestions, for_image = _no_suggestions()
        out = edited(image_hash, f"added {literal(', '.join(checked))}" if checked else "nothing checked")
        return {suggestions: no_suggestions, suggested_for: for_image, **out,
                **({last_edit: views.settled(edit, out[c.shown])} if edit else {})}

    accept_handler = handler(accept, present=accepted)
    accept_handler.endpoint = ep["tag"]
    accept_btn.click(accept_handler, [current, suggestions, suggested_for], outputs,
                     api_name=False, show_progress_on=msg, **QUEUED)


def _wire_undo(ep: dict, c: SimpleNamespace, views: SimpleNamespace) -> None:
    """Undo the last change of tags (a key, a chip, accepted suggestions)."""
    undo_btn, current, last_edit, msg, outputs = c.undo_btn, c.current, c.last_edit, c.msg, c.outputs
    edited = views.edited

    def undo(image_hash, edit):
        """Put the names the last change touched back as they were (remove, then re-add), unless
        another page has changed them since: its edit is newer, and stays."""
        if not edit:
            raise user_error("nothing to undo")
        at = views._index_of(edit["hash"])
        if at is None:
            raise user_error("not undone: that image was deleted on another page")
        if "after" in edit and views.settled(edit, ep["tag_view"](at)["image"])["after"] != edit["after"]:
            raise user_error(f"not undone: {', '.join(edit['touched'])} changed on another page since (the tags "
                             "shown are as stored now)")
        ep["untag"](edit["hash"], edit["touched"])
        if edit["before"]["positives"] or edit["before"]["negatives"]:
            ep["tag"](edit["hash"], edit["before"]["positives"], edit["before"]["negatives"])
        return image_hash, edit

    def undone(result) -> dict:
        image_hash, edit = result
        text = f"undone: {literal(', '.join(edit['touched']))}"
        if edit["hash"] != image_hash:  # made on another image: this one's editor stays as it is
            return {msg: text + " (on another image)", last_edit: None}
        return {**edited(image_hash, text), last_edit: None}

    undo_handler = handler(undo, present=undone, error=lambda m, image_hash, _: edited(image_hash, error_text(m)))
    undo_handler.endpoint = ep["untag"]
    undo_btn.click(undo_handler, [current, last_edit], outputs, api_name=False, show_progress="hidden", **QUEUED)


def _wire_delete(ep: dict, c: SimpleNamespace, views: SimpleNamespace) -> None:
    """Delete the image shown (a wrong upload), once the box is ticked; the next image takes its place."""
    view = ep["tag_view"]

    def delete(image_hash, sure, i, s, vocab):
        if not image_hash:
            raise user_error("no image is shown")
        if not sure:
            raise user_error("tick 'Yes, delete it with its tags and boxes' first")
        said = ep["delete_image"](image_hash)
        return said, view(int(i or 0), s, False, vocab)

    def deleted(result) -> dict:
        said, v = result
        return {**views._present_view(v), c.msg: literal(said), c.last_edit: None, c.del_confirm: False}

    event = handler(delete, present=deleted, error=lambda m, *_: {c.msg: error_text(m)})
    event.endpoint = ep["delete_image"]
    c.del_btn.click(event, [c.current, c.del_confirm, c.index, c.show, c.suggest_vocab],
                    [*c.outputs, c.del_confirm], api_name=False, show_progress_on=c.msg, **QUEUED)


def _store_mark(v: dict, revision: str) -> str:
    """What `store_mark` holds: the store's revision and the image shown. Every change of the store
    changes it (tags compared alone missed this page's edit undone on another page within one watch)."""
    return f"{revision}|{v['image']['hash']}"


def _wire_sync(ep: dict, c: SimpleNamespace, views: SimpleNamespace) -> None:
    """The chips follow an edit made on another page (a rename, a merge, a tag of the same image).
    In the editor's queue, so it runs between this page's saves, never beside one; and only while
    the chips show what the page last stored: an edit of this page still on its way is answered by
    its own save, which shows the stored tags."""
    current, positives, negatives, shown, store_mark = c.current, c.positives, c.negatives, c.shown, c.store_mark

    nothing = {c.msg: gr.update()}  # (an empty dict is read as one output value, not as no updates)
    view = ep["tag_view"]

    def sync(image_hash, pos, neg, before, mark, i, s, vocab, seen=None):
        before = before or {}
        if not _still_shown(image_hash, seen):
            return nothing  # fired before a move to another image that ran first: its view is current
        if image_hash and f"|{GONE}|{image_hash}" in (mark or ""):
            moved = views._present_view(view(int(i or 0), s, False, vocab))
            return {**moved, c.msg: "this image was deleted on another page: showing the next one", c.last_edit: None}
        if not image_hash or before.get("hash") != image_hash:
            return nothing
        if set(pos or []) != set(before["positives"]) or set(neg or []) != set(before["negatives"]):
            return nothing
        now = views.edited(image_hash)
        stored = now[c.shown]
        if stored["hash"] != image_hash:
            return nothing
        if (set(stored["positives"]), set(stored["negatives"])) == (set(before["positives"]), set(before["negatives"])):
            # the tags as shown (re-setting the chips' choices alone once emptied a side): the
            # status line alone (how many are tagged, set here, in order with the page's moves)
            return {c.status: now[c.status]}
        return now

    synced = handler(sync, error=lambda m, *_: nothing)
    synced.endpoint = ep["tag_view"]
    store_mark.change(synced, [current, positives, negatives, shown, store_mark, c.index, c.show, c.suggest_vocab,
                               c.seen_tags], c.outputs, api_name=False,
                       show_progress="hidden", **QUEUED)


def _exports(ep: dict, c: SimpleNamespace, views: SimpleNamespace, choices) -> dict:
    """What `ui.build_app` uses of the tab: refreshes on opening, watching and going to an image."""
    index, show, suggest_vocab, keys, msg = c.index, c.show, c.suggest_vocab, c.keys, c.msg
    view_out = c.view_out
    as_tuple, _present_view, _index_of = views.as_tuple, views._present_view, views._index_of
    view = ep["tag_view"]

    refresh = handler(view, prepare=lambda i, s, vocab: (i, s, False, vocab),
                      present=lambda v: as_tuple(_present_view(v)))

    def watched(revision, i, s, vocab, shown_hash) -> tuple:
        """(keys, the store's mark) at the store's `revision` (changes made on another page). The
        chips and the status line follow through `store_mark` (`_wire_sync`), never here: a person
        may be editing, and the watch runs beside the editor's queue, so it can answer after a move
        to the next image (its status line had put back the image left). Read whether or not the
        filter still takes the image (a label renamed elsewhere: its chips had kept the old name)."""
        v = view(int(i or 0), "all", False, vocab)
        legend = (_keys(v["keys"]), v["keys"][:HOTKEYS])
        if shown_hash and _index_of(shown_hash) is None:  # deleted on another page: `_wire_sync` moves on
            return *legend, f"{revision}|{GONE}|{shown_hash}"
        if v["image"] is None or v["index"] != int(i or 0) or v["image"]["hash"] != shown_hash:
            return *legend, gr.update()
        return *legend, _store_mark(v, revision)

    return {"refresh": (refresh, [index, show, suggest_vocab], view_out),
            "watch": (watched, [index, show, suggest_vocab, c.current], [keys, c.key_names, c.store_mark]),
            "choices": (choices, [suggest_vocab, show], [show, msg]), "view_at": lambda i: as_tuple(_present_view(view(i))),
            "view_of": lambda image_hash: as_tuple(_present_view(view(_index_of(image_hash)))),
            "add_images": c.add_images, "current": c.current}
