"""Detect: one image or many, a typed vocabulary, thresholds; boxes, table and JSON out."""

from __future__ import annotations

import functools
import html
import json
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from detector.low_confidence import FLOOR
from detector.vocabulary import PRESETS

from ..markdown import literal
from .common import error_text, handler, image_input, json_file, png_file, tab_message, user_error

# Names the offline model sees (tests/test_name_mapping.py); "person" it does not (ImageNet has no
# class for people, only a ballplayer, a groom and a scuba diver).
DEFAULT_VOCABULARY = "cat, cup, laptop, bottle"


def _rows(records: list[dict]) -> list[list]:
    """The Boxes table: pixels to one decimal on every row (the JSON keeps full precision)."""
    return [[r["class_name"] + (" (low confidence)" if r.get("low_confidence") else ""), r["score"],
             *(round(float(v), 1) for v in r["box"])] for r in records]


def _count(records: list[dict]) -> str:
    """A gallery caption's count: boxes above the threshold, or else the low-confidence guesses."""
    guesses = sum(1 for r in records if r.get("low_confidence"))
    if len(records) > guesses:
        return f"{len(records) - guesses} box(es)"
    return f"no box; {guesses} guess(es), dashed" if guesses else "no box"  # short: a caption is narrow


def batch_line(results: list[dict]) -> str:
    """What the Detect tab says after Detect all (the files that could not be read, last)."""
    skipped = [r for r in results if "error" in r]
    results = [r for r in results if "error" not in r]
    found = [sum(1 for d in r["detections"] if not d.get("low_confidence")) for r in results]
    guessed = sum(1 for r, n in zip(results, found) if not n and r["detections"])
    line = f"{len(results)} image(s): {sum(found)} box(es)"
    if guessed:
        line += f"; {guessed} image(s) with only low-confidence guesses (dashed)"
    if skipped:
        line += f". Skipped {len(skipped)}: " + "; ".join(literal(r["error"]) for r in skipped[:5])
        line += f" (+{len(skipped) - 5} more)" if len(skipped) > 5 else ""
    return line


def result_line(records: list[dict], threshold: float) -> str:
    """What the Detect tab says about a result: boxes found, or why only dashed guesses (or
    nothing) are shown. Names are the user's text, so they are escaped."""
    guesses = [r for r in records if r.get("low_confidence")]
    found = len(records) - len(guesses)
    if found:
        return f"{found} box(es) scoring {threshold:.2f} or more"
    if guesses:
        best = ", ".join(f"{literal(r['class_name'])} {r['score']:.2f}" for r in guesses)
        return (f"Nothing reached {threshold:.2f}; the best guesses are shown dashed, as low confidence "
                f"({best}). Lower the threshold to see more, or try other names.")
    return (f"No box above {threshold:.2f}, and no guess above {FLOOR:.2f}: to this model nothing here looks like "
            "these names (what it reads each name as is below). Try other names.")


def _not_seen_yet(image) -> str:
    """Pure UI: a new image clears the line on what the model saw in the last one."""
    return ""


_not_seen_yet.ui_only = True


def fill_preset(name: str | None):
    """Pure UI: a preset's names into the vocabulary box (no app operation)."""
    return ", ".join(PRESETS[name]) if name else gr.update()


fill_preset.ui_only = True


# Why each page's last detection failed, until its `.failure()` listener puts it on the Detect line:
# the events are API endpoints, so they raise (a toast, gone in seconds), and a failure listener is
# not told why. Keyed by Gradio's session; the last few hundred pages only.
_WHY_FAILED: OrderedDict[str, str] = OrderedDict()
_KEPT_FAILURES = 256


def _remembering_why(fn):
    """`fn` (a detection event) that records its error for this page's failure listener."""
    def run(image, vocabulary, score, nms, max_det, request: gr.Request = None):
        try:
            return fn(image, vocabulary, score, nms, max_det)
        except gr.Error as e:
            key = getattr(request, "session_hash", None)
            if key:
                _WHY_FAILED[key] = html.unescape(e.message)
                _WHY_FAILED.move_to_end(key)
                while len(_WHY_FAILED) > _KEPT_FAILURES:
                    _WHY_FAILED.popitem(last=False)
            raise

    run.__name__, run.endpoint = fn.__name__, fn.endpoint
    return run


def _why_failed(request: gr.Request | None) -> str:
    """The Detect line after a failed detection: why, as `_remembering_why` recorded it."""
    why = _WHY_FAILED.pop(getattr(request, "session_hash", None) or "", None)
    return error_text(why or "no result: see the message at the top right")


def _failed(request: gr.Request = None) -> tuple:
    """Pure UI: a detection that failed (an empty vocabulary, an unreadable image) clears the last
    result and readings, so the old boxes do not stand beside the error, and says why on the Detect
    line (it had kept the last success's "1 box(es) scoring 0.20 or more" beside a red badge)."""
    return None, [], None, "", _why_failed(request)


def _batch_failed(request: gr.Request = None) -> tuple:
    """Pure UI: Detect all that failed (only unreadable files, too many) clears the last gallery,
    which had stood beside the new files as if it were theirs, and says why."""
    return None, None, _why_failed(request)


_failed.ui_only = _batch_failed.ui_only = True


def build(ep: dict, defaults) -> dict:
    """`defaults`: the served model's DetectorConfig (initial thresholds)."""
    c = _layout(defaults)
    _wire_detect(ep, c)
    _wire_video(ep, c)
    _wire_batch(ep, c)
    return {"vocabulary": c.vocabulary}


def _layout(defaults) -> SimpleNamespace:
    """Every component of the tab, top to bottom, by its name (no events here)."""
    with gr.Row():
        with gr.Column():
            image = image_input(label="Image", type="filepath", sources=["upload", "webcam", "clipboard"],
                               elem_id="detect-image")
            vocabulary = gr.Textbox(label="Vocabulary (comma separated; Enter detects)", value=DEFAULT_VOCABULARY,
                                    lines=1, max_lines=4, elem_id="vocabulary")
            preset = gr.Dropdown(list(PRESETS), label="Vocabulary presets", value=None)
            with gr.Row():
                score = gr.Slider(0, 1, value=defaults.score_threshold, step=0.01, label="Score threshold (Enter detects)",
                                  elem_id="detect-score")
                nms = gr.Slider(0.05, 1, value=defaults.nms_threshold, step=0.05, label="NMS IoU")
                max_det = gr.Slider(1, 300, value=defaults.max_detections, step=1, label="Max detections")
            detect_btn = gr.Button("Detect", variant="primary", elem_id="detect-button")
            msg = tab_message("detect-msg")
            readings = gr.Markdown(elem_id="detect-readings")  # what the model reads each name as
            seen = gr.Markdown(elem_id="detect-seen")  # what it sees in the image, whatever the names
        with gr.Column():
            # no label badge: it sat over the top-left corner, where a whole-image box's label is drawn
            out_image = gr.Image(label="Detections", show_label=False, elem_id="detect-output", format="png")
            table = gr.Dataframe(headers=["name", "score", "x1", "y1", "x2", "y2"], label="Boxes", interactive=False,
                                 elem_id="detect-table")
            download = gr.File(label="Detections (JSON)", interactive=False, elem_id="detect-download")
    with gr.Accordion("A short video", open=False):
        gr.Markdown("Any video OpenCV reads (MP4, AVI, MKV, WebM, …). A browser previews only some codecs: "
                    "\"Video not playable\" on the upload is the preview alone; detection still reads it, and the "
                    "frames come back as a WebM every browser plays.")
        with gr.Row():
            video_in = gr.Video(label="Video", sources=["upload"], elem_id="detect-video")
            video_out = gr.Video(label="Detections", elem_id="detect-video-output")
        stride = gr.Number(10, label="Every n-th frame", precision=0, minimum=1, elem_id="detect-video-stride")
        video_btn = gr.Button("Detect in the video", elem_id="detect-video-button")
        video_msg = tab_message("detect-video-msg")  # its own line: the Detect line is a screen away
        video_json = gr.File(label="Detections per frame (JSON)", interactive=False, elem_id="detect-video-json")
    with gr.Accordion("Many images at once", open=False):
        batch_files = gr.File(file_count="multiple", file_types=["image"], label="Images", elem_id="detect-batch-files")
        batch_btn = gr.Button("Detect all", elem_id="detect-batch-button")
        batch_msg = tab_message("detect-batch-msg")
        batch_gallery = gr.Gallery(label="Results", columns=4, object_fit="contain",  # whole-image boxes stay whole
                                   elem_id="detect-batch-gallery")
        batch_json = gr.File(label="All detections (JSON)", interactive=False, elem_id="detect-batch-json")
    return SimpleNamespace(**locals())


def _reading(ep: dict, c: SimpleNamespace) -> dict:
    """The event that fills the readings line from the vocabulary: chained after every detection
    (one image, a video, Detect all), so the line always describes the names just used."""
    return {"fn": handler(ep["name_readings"]), "inputs": [c.vocabulary], "outputs": c.readings,
            "show_progress": "hidden"}


def _wire_detect(ep: dict, c: SimpleNamespace) -> None:
    """One image: Detect, Enter in the vocabulary, a released slider; then the result line."""
    image, vocabulary, preset, score, nms, max_det = c.image, c.vocabulary, c.preset, c.score, c.nms, c.max_det
    detect_btn, msg, out_image, table, download = c.detect_btn, c.msg, c.out_image, c.table, c.download

    def need_image(image, *rest):
        if image is None:
            raise user_error("upload an image (or use the webcam) first")
        return (image, *rest)

    def named(image, *rest) -> tuple:
        """The detections, and the image's name (the download is named after it)."""
        return (*ep["detect"](image, *rest), image)

    detect = handler(named, prepare=need_image,
                     present=lambda r: (png_file(r[0]), _rows(r[1]), json_file(r[1], "detections", named_after=r[2])))
    detect.endpoint = ep["detect"]
    detect = _remembering_why(detect)

    def hint(detections, threshold) -> str:
        """Pure UI: what the result line says after a detection (none found: what to try), from
        the detections' JSON just written."""
        try:
            records = json.loads(Path(detections).read_text(encoding="utf-8")) if detections else []
        except (OSError, ValueError):
            return ""
        return result_line(records, float(threshold))

    hint.ui_only = True
    inputs, outputs = [image, vocabulary, score, nms, max_det], [out_image, table, download]
    hinted = {"fn": hint, "inputs": [download, score], "outputs": msg, "api_name": False, "show_progress": "hidden"}
    read = _reading(ep, c)
    see = {"fn": handler(ep["image_classes"]), "inputs": [image], "outputs": c.seen, "show_progress": "hidden"}
    failed = {"fn": _failed, "inputs": None, "outputs": [*outputs, c.readings, msg], "api_name": False,
              "show_progress": "hidden"}
    first = detect_btn.click(detect, inputs, outputs, api_name="detect", show_progress_on=msg)
    first.success(**hinted).success(**read, api_name=False).success(**see, api_name="image_classes")
    first.failure(**failed)
    first = vocabulary.submit(detect, inputs, outputs, api_name=False, show_progress_on=msg)
    first.success(**hinted).success(**read, api_name=False).success(**see, api_name=False)
    first.failure(**failed)
    for slider in (score, nms, max_det):  # released, or a value typed and Enter pressed (common.SLIDER_ENTER_SCRIPT)
        first = slider.release(detect, inputs, outputs, api_name=False, show_progress_on=msg)
        first.success(**hinted).success(**read, api_name=False).success(**see, api_name=False)  # names may have changed
        first.failure(**failed)

    def again(image, *rest):
        """A preset picked with an image on screen detects again; with none, nothing happens."""
        return detect(image, *rest) if image is not None else (gr.update(),) * len(outputs)

    again.endpoint = ep["detect"]
    again = _remembering_why(again)
    first = preset.change(fill_preset, preset, vocabulary, api_name=False).success(
        again, inputs, outputs, api_name=False, show_progress_on=msg)
    first.success(**hinted).success(**read, api_name=False)
    first.failure(**failed)
    image.change(_not_seen_yet, image, c.seen, api_name=False, show_progress="hidden")


def _wire_video(ep: dict, c: SimpleNamespace) -> None:
    """A short video, every n-th frame, with a progress bar."""
    video_in, video_out, video_json, video_btn = c.video_in, c.video_out, c.video_json, c.video_btn
    stride, vocabulary, score, nms, max_det, msg = c.stride, c.vocabulary, c.score, c.nms, c.max_det, c.video_msg

    def video(path, vocabulary, score, nms, max_det, every, progress=gr.Progress()):
        """A short video: the annotated frames and a JSON of every sampled frame's detections."""
        def per_frame(done: int, total: int):
            progress((done, total or None), desc="frames", unit="frames")

        def need_video(path, *rest):
            if not path:
                raise user_error("upload a video first")
            return (path, *rest)

        run = handler(functools.partial(ep["detect_video"], progress=per_frame), prepare=need_video,
                      present=lambda r: (r["video"], json_file(r["frames"], "detections", named_after=path), r["note"]),
                      error=lambda why, *_: (None, None, error_text(why)))  # not the last video's result
        return run(path, vocabulary, score, nms, max_det, int(every or 1))

    video.endpoint = ep["detect_video"]
    video_btn.click(video, [video_in, vocabulary, score, nms, max_det, stride], [video_out, video_json, msg],
                    api_name=False, show_progress_on=msg).success(**_reading(ep, c), api_name=False)


def _wire_batch(ep: dict, c: SimpleNamespace) -> None:
    """Many images at once: a gallery and one JSON."""
    batch_files, batch_btn, batch_gallery = c.batch_files, c.batch_btn, c.batch_gallery
    batch_json, vocabulary, score, nms, max_det = c.batch_json, c.vocabulary, c.score, c.nms, c.max_det
    msg = c.batch_msg

    def batch_present(results):
        gallery = [(png_file(r["drawn"]), f"{Path(r['image']).name}: {_count(r['detections'])}")
                   for r in results if "error" not in r]
        return gallery, json_file([{k: r[k] for k in ("image", "detections", "error") if k in r} for r in results],
                                  "detections", named_after="batch")

    def said(results) -> str:
        """Pure UI: the message line after Detect all, from the JSON just written."""
        try:
            return batch_line(json.loads(Path(results).read_text(encoding="utf-8"))) if results else ""
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    said.ui_only = True
    run = handler(ep["detect_batch"], present=batch_present)
    run.endpoint = ep["detect_batch"]
    first = batch_btn.click(_remembering_why(run), [batch_files, vocabulary, score, nms, max_det],
                            [batch_gallery, batch_json], api_name="detect_batch", show_progress_on=msg)
    first.success(said, [batch_json], msg, api_name=False, show_progress="hidden").success(**_reading(ep, c),
                                                                                            api_name=False)
    first.failure(_batch_failed, None, [batch_gallery, batch_json, msg], api_name=False, show_progress="hidden")
