"""Everything the app does, as plain methods over plain values (no Gradio). The UI's events and
the named API endpoints are both generated from the methods marked `@endpoint` (see
`app.endpoints`), so they take the same parameters and behave the same; tests call them too.

`AppService` is the facade: it holds the label store, the training-job runner and the live
`Predictor`, runs detection, and takes every other operation from one class per concern:
`service_tagging` (images, tags, the Tag queue), `service_suggestions`, `service_dataset` (label
edits, import, export), `service_training` (runs) and `service_models` (serving, hot swap, Hub).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from detector import Predictor
from detector.annotate import annotate, detections_to_records, draw_assignment
from detector.images import ImageLoadError, load_image
from detector.low_confidence import best_guesses
from detector.vocabulary import parse_vocabulary
from train.run_config import RunConfig

from .jobs import TrainingJobs
from .markdown import literal
from .policy import AccessPolicy
from .service_base import Progress, _nonempty, _upload_path, endpoint  # noqa: F401 - imported from here too
from .service_dataset import EXPORT_FORMATS, DatasetMixin, _import_sentence  # noqa: F401
from .service_models import HOW_TO_GET_WEIGHTS, ModelInfo, ModelsMixin, headline, model_limits  # noqa: F401
from .service_suggestions import SUGGEST_BATCH, SUGGEST_KEEP, SUGGEST_SIDE, SuggestionPass, SuggestionsMixin  # noqa: F401
from .service_tagging import HOTKEYS, MAX_ZIP_MEMBER_BYTES, MAX_ZIP_MEMBERS, TaggingMixin, queue_filter  # noqa: F401
from .service_training import STORED_BOXES, TrainingMixin, _choice_summary  # noqa: F401
from .store import LabelStore

MAX_VIDEO_FRAMES = 120  # frames of one video the Detect tab runs (a short clip; the CLI takes any length)
MAX_BATCH_IMAGES = 50  # images of one "Detect all" (the CLI takes folders of any size)
BATCH_CHUNK = 8  # images decoded at once by Detect all: memory stays flat whatever the count
BATCH_PREVIEW_SIDE = 1600  # longer side of Detect all's drawings (boxes in the JSON stay in original pixels)


def default_data_dir() -> Path:
    """$DATA_DIR, else /data when it exists (Spaces persistent storage), else ./data."""
    if os.environ.get("DATA_DIR"):
        return Path(os.environ["DATA_DIR"])
    if Path("/data").is_dir() and os.access("/data", os.W_OK):
        return Path("/data")
    return Path("data")


SHOWN_READINGS = 50  # names listed in the readings line, seen and unseen each


def _more(count: int) -> str:
    return f" … and {count - SHOWN_READINGS} more" if count > SHOWN_READINGS else ""


def _ordinal(n: int) -> str:
    """'st', 'nd', 'rd' or 'th' for n ("every 2nd", "every 11th")."""
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


class AppService(TaggingMixin, SuggestionsMixin, DatasetMixin, TrainingMixin, ModelsMixin):
    """Every operation of the app (see the module docstring): the state all concerns share is set here."""

    def __init__(self, data_dir: str | Path | None = None, model: str | None = None,
                 predictor: Predictor | None = None, device: str | None = None, policy: AccessPolicy | None = None):
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.policy = policy or AccessPolicy.from_env()
        self.store = LabelStore(self.data_dir)
        self.jobs = TrainingJobs(self.data_dir / "runs", child_env=lambda: self.policy.child_env([self.data_dir]))
        self.models_dir = self.data_dir / "models"
        self._capacity_cache: tuple = (None, {})  # (backbone key, head parameters per preset)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self._lock = threading.Lock()
        # (model version, names, threshold) -> {image hash: names suggested}: see `find_suggestions`
        self._suggested: OrderedDict[tuple, dict[str, tuple[str, ...]]] = OrderedDict()
        self._suggested_lock = threading.Lock()
        self._passes: dict[tuple, SuggestionPass] = {}  # the latest pass per key, running or done
        source = model or "auto"
        if predictor is None:
            with self.policy.visitor_hub():  # the last choice may have been a visitor's
                restored = self._restore_choice() if source == "auto" else None
            predictor, note, source = restored or self._load_default(model)
        else:
            note = "given"
        self.policy.serve_visitors()  # from here on, no Hub request carries the operator's token
        self.predictor = predictor
        self.serving = ModelInfo(source=source, note=note)

    # --- detection ---------------------------------------------------------------------------
    @endpoint(gpu=True, api=False)
    def detect(self, image, vocabulary: str, score_threshold: float | None = None,
               nms_threshold: float | None = None, max_detections: int | None = None):
        """-> (annotated RGB array, detection records with boxes in the original image's pixels)."""
        loaded = load_image(image)  # decoded once: the predictor and the drawing share it
        det = self.predictor.predict(loaded, vocabulary, score_threshold, nms_threshold,
                                     int(max_detections) if max_detections else None)[0]
        return self._drawn_with_guesses(loaded, det, vocabulary, nms_threshold)

    def _drawn_with_guesses(self, loaded, det, vocabulary: str, nms_threshold: float | None,
                            canvas_side: int | None = None):
        """(drawing, records) of `det`; when nothing reached the threshold, the best guess per
        name, marked low confidence and drawn dashed (the image's encoding is cached: a re-score).
        `canvas_side`: drawn on a copy at most that large (the records keep original pixels)."""
        guesses = best_guesses(self.predictor, loaded, vocabulary, nms_threshold) if len(det) == 0 else None
        records = detections_to_records(det) + (detections_to_records(guesses) if guesses is not None else [])
        canvas = loaded if canvas_side is None else loaded.shrunk(canvas_side)
        return annotate(canvas, det, guesses), records

    @endpoint(gpu=True, api=False)
    def image_classes(self, image) -> str:
        """What the served model sees in the image whatever the names typed, one Markdown line: its
        best ImageNet classes ("espresso 0.71" on a cup of coffee, where "cup" finds nothing), so a
        person knows which names would find something; empty for a model that reads any name."""
        if image is None:
            return ""
        found = self.predictor.image_classes(image)
        if found is None:  # a model that reads any name (CLIP): nothing to suggest
            return ""
        if not found:
            return "In this image the model is sure of no ImageNet class (none above 0.20)."
        # a box's score for a name adds up the classes the name reads as (cat: Egyptian cat + tabby
        # + ...): a tester read a cat box at 0.67 beside "Egyptian cat 0.49" as a contradiction
        return ("In this image the model sees these ImageNet classes (whichever names you typed): "
                + ", ".join(f"**{literal(name)}** {p:.2f}" for name, p in found)
                + ". A name's box score adds up all the classes it reads as, so it can be higher.")

    @endpoint(gpu=True)  # the mapping's tensors live on the model's device
    def name_readings(self, vocabulary: str) -> str:
        """What the served model reads each typed name as, one Markdown line (names escaped: they
        are user input): each seen name's ImageNet classes, then the names it does not see, in one
        group ("Not seen by this model: giraffe, sky"); empty for a model that reads any name (CLIP)."""
        readings = self.predictor.name_readings(vocabulary)
        if not readings:
            return ""
        seen = [r for r in readings if r.seen]
        # a name tags trained that still maps onto no ImageNet class is learnt, weakly, not unseen
        # (the page said "Not seen by this model: person" beside "trained on person" and a 0.02 box)
        tagged = {n.casefold() for n in self.predictor.model.config.trained_class_names}
        learnt = [r.name for r in readings if not r.seen and r.name.casefold() in tagged]
        unseen = [r.name for r in readings if not r.seen and r.name.casefold() not in tagged and not r.loose]
        # an unseen name with classes near it still gets weak boxes from them: "Not seen" beside a
        # 0.22 box read as a contradiction
        loose = [r for r in readings if not r.seen and r.name.casefold() not in tagged and r.loose]
        parts = [f"**{literal(r.name)}** → {literal(', '.join(r.classes))}"
                 + (f" (+{r.count - len(r.classes)} more)" if r.count > len(r.classes) else "") for r in seen[:SHOWN_READINGS]]
        line = ("Reads as (ImageNet classes): " + "; ".join(parts) + _more(len(seen)) + "." if parts else "")

        def group(names: list[str]) -> str:
            return ", ".join(f"**{literal(n)}**" for n in names[:SHOWN_READINGS]) + _more(len(names))

        if learnt:
            line += ((" " if line else "") + f"Learnt from your tags alone, with no ImageNet class to build on "
                     f"(expect low scores): {group(learnt)}.")
        if loose:
            line += ((" " if line else "") + "No ImageNet class of their own, so only weak boxes from what they "
                     "resemble: " + "; ".join(f"**{literal(r.name)}** (like {literal(', '.join(r.loose))})"
                                              for r in loose[:SHOWN_READINGS]) + _more(len(loose)) + ".")
        if unseen:
            line += (" " if line else "") + f"Not seen by this model: {group(unseen)}."
        return line

    @endpoint(gpu=True, api=False)
    def detect_batch(self, images: list, vocabulary: str, score_threshold: float | None = None,
                     nms_threshold: float | None = None, max_detections: int | None = None) -> list[dict]:
        """-> [{"image": name, "drawn": array, "detections": records}], the model run in batches; an
        image with nothing above the threshold gets its best guesses, as `detect` does. A file that
        is no readable image does not stop the others: it is listed as {"image": name, "error": why}
        in its place (all unreadable: one error). At most `MAX_BATCH_IMAGES`, decoded `BATCH_CHUNK`
        at a time, drawn at most `BATCH_PREVIEW_SIDE` px (a gallery's previews)."""
        if not images:
            raise ValueError("add some images first")
        if len(images) > MAX_BATCH_IMAGES:
            raise ValueError(f"Detect all takes at most {MAX_BATCH_IMAGES} images at a time ({len(images)} given): "
                             "run them in parts, or a folder of any size with `python -m detector predict FOLDER`")
        names = [Path(str(getattr(f, "name", f))).name for f in images]
        out, errors = {}, []
        for start in range(0, len(images), BATCH_CHUNK):  # decoded a few at a time: 20 uploads of 4000 x 4000
            loaded = {}                                     # px had taken the app from 1.9 to 6 GB
            for i in range(start, min(len(images), start + BATCH_CHUNK)):
                try:
                    loaded[i] = load_image(getattr(images[i], "name", images[i]))
                except (ValueError, OSError) as e:  # ImageLoadError is a ValueError
                    out[i] = {"image": names[i], "error": str(e)}
                    errors.append(str(e))
            if not loaded:
                continue
            dets = self.predictor.predict(list(loaded.values()), vocabulary, score_threshold, nms_threshold,
                                          int(max_detections) if max_detections else None)
            for i, det in zip(loaded, dets):
                drawn, records = self._drawn_with_guesses(loaded[i], det, vocabulary, nms_threshold,
                                                          BATCH_PREVIEW_SIDE)
                out[i] = {"image": names[i], "drawn": drawn, "detections": records}
        if len(errors) == len(images):
            raise ImageLoadError("no image could be read: " + "; ".join(errors))
        return [out[i] for i in range(len(images))]

    @endpoint(gpu=True, api=False)
    def detect_video(self, video, vocabulary: str, score_threshold: float | None = None,
                     nms_threshold: float | None = None, max_detections: int | None = None, stride: int = 10,
                     *, progress: Progress | None = None) -> dict:
        """A short video: every `stride`-th frame (at most `MAX_VIDEO_FRAMES`) through the model ->
        {"video": the annotated frames as a WebM, "frames": [{frame, time, detections}], "note"}."""
        from detector.video import detect_video

        path = _upload_path(video)
        if path is None or not path.is_file():
            raise ValueError("upload a video first")
        stride = max(1, int(stride or 1))
        out = Path(tempfile.mkdtemp(prefix="ovd-video-")) / f"{Path(path).stem[:60] or 'video'}-detections.webm"
        with self._lock:
            predictor = self.predictor
        frames, info, cut = detect_video(predictor, str(path), vocabulary, score_threshold, nms_threshold,
                                         int(max_detections) if max_detections else None, stride,
                                         MAX_VIDEO_FRAMES, out, progress)
        nth = "frame" if stride == 1 else f"{stride}{_ordinal(stride)}"
        note = (f"{len(frames)} frame{'s' * (len(frames) != 1)} (every {nth} of {info.frames or '?'} at "
                f"{info.fps:.0f} fps)"
                + (f"; stopped after {MAX_VIDEO_FRAMES} frames — raise the stride to cover the whole video"
                   if cut else ""))
        # frames name the video as it was uploaded ("clip.mp4"), not the server's path to the upload
        return {"video": str(out), "frames": [{**f, "image": path.name} for f in frames], "note": note}

    @endpoint(gpu=True, api=False)
    def assign(self, image, tags: str, vocabulary: str | None = None, num_proposals: int | None = None,
               shown: int = 50):
        """Which proposal each image-label rule trains, among the `num_proposals` top proposals
        it considers (default: as many as training considers, `image_label_num_proposals`), with
        the top `shown` drawn faintly and every chosen one drawn in its rule's colour.
        -> (drawing, rows [rule, proposal, rank among those considered, % of the image's area, box,
        labels]); the whole-image box has no rank."""
        loaded = load_image(image)
        considered = int(num_proposals or self.predictor.config.image_label_num_proposals)
        # at the scale the Train tab's runs resize tag images to: the candidates training considers
        a = self.predictor.assign(loaded, parse_vocabulary(tags), vocabulary or None, considered,
                                  training_size=RunConfig().label_size)
        n = len(a.proposals) - 1  # the whole-image box is last
        h, w = loaded.original_size
        rows = []
        for rule, choices in a.rules.items():
            for idx, names in choices:
                x1, y1, x2, y2 = (float(v) for v in a.proposals[idx])
                area = 100 * max(0.0, x2 - x1) * max(0.0, y2 - y1) / max(1, w * h)
                rows.append([rule, idx if idx < n else "whole image", f"{idx + 1} of {n}" if idx < n else "—",
                             round(area, 1), [round(v, 1) for v in (x1, y1, x2, y2)], ", ".join(names)])
        return draw_assignment(loaded, a, faint=int(shown)), rows
