"""Everything the app does, as plain methods over plain values (no Gradio). The UI's events and
the named API endpoints are both generated from the methods marked `@endpoint` (see
`app.endpoints`), so they take the same parameters and behave the same; tests call them too.

Holds the label store, the training-job runner and the live `Predictor`; swapping the model is
one reference assignment under a lock, so requests in flight finish on the model they started
with and the next request sees the new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from detector import ImageLoadError, Predictor
from detector.annotate import annotate, detections_to_records, draw_assignment
from detector.files import atomic_write, atomic_write_json, read_json
from detector.images import IMAGE_SUFFIXES, load_image
from detector.low_confidence import best_guesses
from detector.vocabulary import parse_vocabulary
from train.heldout import heldout_summary, plan_from_detic
from train.run_config import PretrainConfig, RunConfig
from train.run_dir import ACTIVE_STATES, RunDir

from .jobs import JobError, TrainingJobs
from .policy import AccessPolicy
from .store import LabelStore, StoreError

log = logging.getLogger(__name__)


def endpoint(gpu: bool = False, api: bool = True, file: bool = False):
    """Mark a method as an app operation: a UI event and (with `api`) a named API endpoint of the
    same name. `gpu`: it runs the model (on a ZeroGPU Space it is wrapped in `spaces.GPU`).
    Operations on uploaded files (`api=False`) reach the API through their UI event instead.
    `file`: it returns a path the API sends as a file the caller downloads."""

    def mark(fn):
        fn.endpoint = {"gpu": gpu, "api": api, "file": file}
        return fn

    return mark


# A progress callback: (images done, images in all). Operations that take one (keyword-only) report
# through it; it is for in-process callers (the UI), never a parameter of the API.
Progress = Callable[[int, int], None]

# The "with suggestion" queue filter: the model runs over the stored images in a background pass,
# in batches of at most this many (smaller ones for a few images, so progress shows at least every
# tenth of them), and the suggestions of the last few (model, names, threshold) are kept in memory.
SUGGEST_BATCH = 8
SUGGEST_KEEP = 4
# The pass's shorter image side (at most the model's own): the offline preset at its 640 costs
# about 2.5x as much per image, for the same names on the test photos (see `Predictor.at_size`).
SUGGEST_SIDE = 384

# A run's box data when the store has boxes and no box file is given: `_launch` writes them into
# the run folder as COCO (`RunDir.write_boxes`) and the run trains on them beside the tags.
STORED_BOXES = "(the stored boxes)"
EXPORT_FORMATS = ("detic", "csv", "coco_detections", "yolo", "voc", "label_studio")
MAX_VIDEO_FRAMES = 120  # frames of one video the Detect tab runs (a short clip; the CLI takes any length)
HOTKEYS = 9  # the Tag tab's number keys 1-9: the first nine labels created (`tag_view`'s `keys`)

MAX_ZIP_MEMBERS = 5000
MAX_ZIP_MEMBER_BYTES = 50 * 1024 * 1024


def default_data_dir() -> Path:
    """$DATA_DIR, else /data when it exists (Spaces persistent storage), else ./data."""
    if os.environ.get("DATA_DIR"):
        return Path(os.environ["DATA_DIR"])
    if Path("/data").is_dir() and os.access("/data", os.W_OK):
        return Path("/data")
    return Path("data")


@dataclass
class ModelInfo:
    source: str
    note: str = ""


@dataclass
class SuggestionPass:
    """One background pass of the model over the images not looked at yet, for one (model
    version, names, threshold) key (`AppService.start_suggestions`)."""

    key: tuple
    total: int  # images the pass runs on
    done: int = 0
    error: str = ""
    stop: threading.Event = field(default_factory=threading.Event)
    listeners: list = field(default_factory=list)  # Progress callbacks: (done, total) before each batch and at the end
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class AppService:
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
            predictor, note, source = restored or (*self._load_default(model), source)
        else:
            note = "given"
        self.policy.serve_visitors()  # from here on, no Hub request carries the operator's token
        self.predictor = predictor
        self.serving = ModelInfo(source=source, note=note)

    @property
    def predictor(self) -> Predictor:
        """The live model."""
        return self._served[1]

    @predictor.setter
    def predictor(self, new: Predictor) -> None:
        """Serving another model (a hot swap) gives it a new `model_version`, one reference
        assignment: what was found with the one before (the Tag queue's suggestions) no longer applies."""
        self._served = (getattr(self, "_served", (-1, None))[0] + 1, new)

    @property
    def model_version(self) -> int:
        """Counts the models served since the start: changes on every swap."""
        return self._served[0]

    @property
    def choice_file(self) -> Path:
        """DATA_DIR/models/live.json: the model a person chose last (`use_model`), served again
        after a restart unless the app is started with another `--model`."""
        return self.models_dir / "live.json"

    def _restore_choice(self) -> tuple[Predictor, str, str] | None:
        choice = read_json(self.choice_file)
        if not choice or not choice.get("source"):
            return None
        source, when = choice["source"], time.strftime("%Y-%m-%d %H:%M", time.localtime(choice.get("chosen", 0)))
        try:
            predictor = Predictor.from_pretrained(source, device=self.device)
        except Exception as e:  # noqa: BLE001 - a deleted run, an unreachable Hub: say so, serve the default
            log.warning("the last chosen model %s could not be loaded (%s): serving the default", source, e)
            predictor, note = self._load_default(None)
            return predictor, f"{note}; the last chosen model '{Path(source).name}' could not be loaded " \
                              f"({str(e).splitlines()[0][:120]})", "auto"
        return predictor, f"restored after a restart: the model last chosen on {when}", source

    def _load_default(self, model: str | None) -> tuple[Predictor, str]:
        """`auto` (default): the COCO + CLIP preset when its weights can be fetched, otherwise
        the packaged offline model, with the reason in one line."""
        from detector import HubUnavailableError
        from detector.presets import FIRST_CHOICE

        source = model or "auto"
        if source == "auto":
            try:
                predictor = Predictor.from_pretrained(FIRST_CHOICE, device=self.device)
                if getattr(predictor.model, "init_report", None) is None:
                    raise HubUnavailableError("the COCO detector weights could not be downloaded")
                return predictor, f"'{FIRST_CHOICE}': COCO localisation + CLIP region scores"
            except HubUnavailableError as e:
                reason = str(e).split(" (")[0]
                log.warning("%s unavailable (%s): serving the packaged offline model", FIRST_CHOICE, reason)
                return (Predictor.from_pretrained("offline", device=self.device),
                        f"offline model: {FIRST_CHOICE} unavailable ({reason})")
        try:
            return Predictor.from_pretrained(source, device=self.device), f"loaded '{source}'"
        except HubUnavailableError as e:
            log.warning("%s; falling back to the packaged offline model", e)
            return Predictor.from_pretrained("offline", device=self.device), f"'{source}' unavailable: using 'offline'"

    # --- detection ---------------------------------------------------------------------------
    @endpoint(gpu=True, api=False)
    def detect(self, image, vocabulary: str, score_threshold: float | None = None,
               nms_threshold: float | None = None, max_detections: int | None = None):
        """-> (annotated RGB array, detection records with boxes in the original image's pixels)."""
        loaded = load_image(image)  # decoded once: the predictor and the drawing share it
        det = self.predictor.predict(loaded, vocabulary, score_threshold, nms_threshold,
                                     int(max_detections) if max_detections else None)[0]
        # nothing reached the threshold: the best guess per name, marked low confidence (dashed)
        guesses = best_guesses(self.predictor, loaded, vocabulary, nms_threshold) if len(det) == 0 else None
        records = detections_to_records(det) + (detections_to_records(guesses) if guesses is not None else [])
        return annotate(loaded, det, guesses), records

    @endpoint(gpu=True, api=False)
    def detect_batch(self, images: list, vocabulary: str, score_threshold: float | None = None,
                     nms_threshold: float | None = None, max_detections: int | None = None) -> list[dict]:
        """-> [{"image": name, "drawn": array, "detections": records}], the model run in batches."""
        if not images:
            raise ValueError("add some images first")
        loaded = [load_image(getattr(f, "name", f)) for f in images]
        dets = self.predictor.predict(loaded, vocabulary, score_threshold, nms_threshold,
                                      int(max_detections) if max_detections else None)
        return [{"image": Path(str(getattr(f, "name", f))).name, "drawn": annotate(im, d),
                 "detections": detections_to_records(d)} for f, im, d in zip(images, loaded, dets)]

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
        note = (f"{len(frames)} frames (every {stride}th of {info.frames or '?'} at {info.fps:.0f} fps)"
                + (f"; stopped after {MAX_VIDEO_FRAMES} frames — raise the stride to cover the whole video"
                   if cut else ""))
        return {"video": str(out), "frames": frames, "note": note}

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

    # --- tagging -----------------------------------------------------------------------------
    @endpoint(api=False)
    def add_images(self, files: list) -> dict:
        """Add image files, bytes or zip archives; returns {added: [hashes], new: [hashes not in the
        store before], duplicates: [names of images already there or given twice], skipped: [reasons]}."""
        before = {r["hash"] for r in self.store.images()}
        added, skipped = [], []
        for f in files or []:
            path = _upload_path(f)
            if path is not None and path.suffix.lower() == ".zip":
                a, s = self._add_zip(path)
                added += a
                skipped += s
                continue
            try:
                added.append(self.store.add_image(f if path is None else path))
            except (ValueError, OSError) as e:  # one bad file must not stop the others
                skipped.append(f"{path.name if path else 'upload'}: {e}")
        seen, new, duplicates = set(), [], []
        for h in added:
            if h in before or h in seen:
                row = self.store._image(h)
                duplicates.append(row["original_name"] or h[:12])
            else:
                new.append(h)
            seen.add(h)
        return {"added": list(dict.fromkeys(added)), "new": new, "duplicates": duplicates, "skipped": skipped}

    def _add_zip(self, path: Path) -> tuple[list[str], list[str]]:
        added, skipped = [], []
        try:
            with zipfile.ZipFile(path) as z:
                members = [m for m in z.infolist() if not m.is_dir()
                           and Path(m.filename).suffix.lower() in IMAGE_SUFFIXES]
                if len(members) > MAX_ZIP_MEMBERS:
                    return [], [f"{path.name}: more than {MAX_ZIP_MEMBERS} images"]
                for m in members:
                    if m.file_size > MAX_ZIP_MEMBER_BYTES:
                        skipped.append(f"{m.filename}: larger than {MAX_ZIP_MEMBER_BYTES // 2**20} MB")
                        continue
                    try:
                        added.append(self.store.add_image(z.read(m), Path(m.filename).name))
                    except (ValueError, OSError) as e:
                        skipped.append(f"{m.filename}: {e}")
        except zipfile.BadZipFile:
            skipped.append(f"{path.name}: not a valid zip file")
        return added, skipped

    @endpoint()
    def add_folder(self, folder: str) -> dict:
        """Add every image under a server folder the operator allows (`APP_ALLOWED_DIRS`)."""
        folder_path = self.policy.server_path(folder, "folder")
        if not folder_path.is_dir():
            raise StoreError(f"not a folder on the server: {Path(folder).name}")
        files, outside = self.policy.allowed_files(folder_path)  # links pointing outside: skipped, reported
        result = self.add_images(files)
        return {**result, "skipped": [*result["skipped"], *outside]}

    @endpoint()
    def images(self) -> list[dict]:
        """Every stored image, oldest first: hash, original name, size, positive/negative tags."""
        return [{k: r[k] for k in ("hash", "original_name", "width", "height", "positives", "negatives")}
                for r in self.store.images()]

    @endpoint()
    def tag_view(self, index: int = 0, show: str = "all", backward: bool = False, vocabulary: str | list[str] = "") -> dict:
        """The tagging queue at `index` (clamped): the image, its tags, the label list and progress.
        `show` restricts the queue to the images that match (`queue_filter`): when the image at
        `index` does not, the nearest one after it that does is shown (before it with `backward`;
        failing that, the nearest the other way). `matches`: how many images match; `position`:
        the shown image's place among them (1-based); `image` is None when none matches.
        `vocabulary`: the names Suggest uses (empty = the labels), `suggest_names` as parsed; a
        "suggestion:NAME" filter reads what the suggestion pass (`start_suggestions`) has found so
        far with them and the live model, and never waits for it: `pending` counts the images it has
        not looked at yet (they match nothing until it has), `running` whether it is looking now,
        `suggestion_error` why the last pass stopped, if it failed. `keys`: the labels number keys
        1-9 toggle, in the order the labels were created (a label keeps its key as others arrive)."""
        rows = self.store.images()
        tagged, total = self.store.progress()
        show = (show or "all").strip() or "all"
        suggested, pending, names, state = None, 0, [], None
        try:
            names = self._suggest_vocabulary(vocabulary)
        except ValueError:
            if show.startswith("suggestion:"):
                raise
        if show.startswith("suggestion:"):
            suggested, pending = self._found_suggestions(names, rows)
            state = self._pass_of(names)
        matches = queue_filter(show, suggested)
        matching = [i for i, r in enumerate(rows) if matches(r)]
        view = {"index": 0, "count": len(rows), "tagged": tagged, "labels": self.store.labels(),
                "keys": self.store.labels_by_age()[:HOTKEYS], "image": None,
                "show": show, "matches": len(matching), "position": None, "suggest_names": names,
                "pending": pending, "running": bool(state and state.running and pending),
                "suggestion_error": state.error if state else ""}
        if matching:
            index = max(0, min(int(index or 0), len(rows) - 1))
            after, before = [i for i in matching if i >= index], [i for i in reversed(matching) if i <= index]
            index = ((before or after) if backward else (after or before))[0]
            row = rows[index]
            view.update(index=index, position=matching.index(index) + 1,
                        image={"hash": row["hash"], "name": row["original_name"] or row["hash"][:12],
                               "positives": row["positives"], "negatives": row["negatives"]})
        return view

    @endpoint(api=False)
    def image_preview(self, image_hash: str, max_side: int = 1024):
        """A stored image as an RGB array for display (the data folder itself is never served)."""
        return load_image(self.store.image_path(image_hash), max_side=max_side).array

    @endpoint()
    def first_untagged(self) -> int:
        """Index of the first image with no tags (0 when all are tagged)."""
        return next((i for i, r in enumerate(self.store.images()) if not r["positives"] and not r["negatives"]), 0)

    @endpoint()
    def tag(self, image_hash: str, positives: str | list[str], negatives: str | list[str] = "") -> dict:
        """Add tags to an image (present / not present); other tags stay. Returns its tags as stored."""
        pos = parse_vocabulary(positives) if _nonempty(positives) else []
        neg = parse_vocabulary(negatives) if _nonempty(negatives) else []
        return self.store.add_tags(image_hash, pos, neg)

    @endpoint()
    def untag(self, image_hash: str, names: str | list[str]) -> dict:
        """Remove tags from an image; other tags stay. Returns its tags as stored."""
        return self.store.remove_tags(image_hash, parse_vocabulary(names) if _nonempty(names) else [])

    @endpoint(gpu=True)
    def suggest(self, image_hash: str, vocabulary: str | list[str] = "", score_threshold: float | None = None) -> list[str]:
        """Names the current model detects in the image, best first, for a person to accept.
        The vocabulary defaults to the store's labels."""
        vocabulary = vocabulary if _nonempty(vocabulary) else self.store.labels()
        if not vocabulary:
            raise ValueError("type a vocabulary in the Detect tab (or tag a few images) first")
        det = self.predictor.predict(self.store.image_path(image_hash), vocabulary, score_threshold)[0]
        best: dict[str, float] = {}
        for name, score in zip(det.data["class_name"], det.confidence):
            best[str(name)] = max(best.get(str(name), 0.0), float(score))
        return sorted(best, key=best.get, reverse=True)

    @endpoint(gpu=True)
    def find_suggestions(self, vocabulary: str | list[str] = "", *, progress: Progress | None = None) -> dict:
        """What `suggest` proposes for every stored image (its names, its threshold: the model's
        own), for the Tag queue's "suggestion:NAME" filter, waiting for it. Found once per model,
        names and threshold and kept in memory: the model runs, in batches, only over the images not
        looked at yet (joining the background pass `start_suggestions` runs, when one is), and a
        model swap starts afresh. `progress(done, total)` is called before each batch and once at
        the end. -> {"names", "images", "looked_at": images the model ran on now, "to_review":
        {name: images where it is suggested and not yet a tag}}."""
        names = self._suggest_vocabulary(vocabulary)
        looked_at = 0
        while True:
            state = self._start_pass(names, progress)
            if state.thread is not None:
                state.thread.join()
            if state.error:
                raise ValueError(f"finding suggestions stopped: {state.error}")
            looked_at += state.total
            rows = self.store.images()
            suggested, pending = self._found_suggestions(names, rows)
            if not pending or state.stop.is_set():  # done; or stopped (a swap): nothing more to find now
                break
        if progress and not looked_at:
            progress(len(rows), len(rows))
        review = {n: queue_filter(f"suggestion:{n}", suggested) for n in names}
        return {"names": names, "images": len(rows), "looked_at": looked_at,
                "to_review": {n: sum(1 for r in rows if matches(r)) for n, matches in review.items()}}

    @endpoint()
    def start_suggestions(self, vocabulary: str | list[str] = "") -> dict:
        """Start the suggestion pass for these names (empty = the labels) and the live model in the
        background, unless one is running or every image has been looked at; returns at once with
        `suggestion_progress`. One pass per (model, names, threshold) at a time; the Tag queue shows
        what it has found so far."""
        self._start_pass(self._suggest_vocabulary(vocabulary))
        return self.suggestion_progress(vocabulary)

    @endpoint()
    def suggestion_progress(self, vocabulary: str | list[str] = "") -> dict:
        """How far the suggestion pass for these names and the live model is: {"names", "images",
        "checked": images looked at, "running", "error": why the last pass failed, or ""}."""
        names = self._suggest_vocabulary(vocabulary)
        rows = self.store.images()
        _, pending = self._found_suggestions(names, rows)
        state = self._pass_of(names)
        return {"names": names, "images": len(rows), "checked": len(rows) - pending,
                "running": bool(state and state.running), "error": state.error if state else ""}

    def _suggest_key(self, names: list[str]) -> tuple[tuple, Predictor]:
        version, predictor = self._served  # one snapshot: a swap meanwhile files these under the old model
        return (version, tuple(names), float(predictor.model.config.score_threshold)), predictor

    def _pass_of(self, names: list[str]) -> SuggestionPass | None:
        """The latest pass for these names and the live model (running or done), if any."""
        if not names:
            return None
        key, _ = self._suggest_key(names)
        with self._suggested_lock:
            return self._passes.get(key)

    def _start_pass(self, names: list[str], progress: Progress | None = None) -> SuggestionPass:
        """The running pass for these names and the live model (`progress` joins it), else a new
        one over the images not looked at yet, started in a thread (none when there are none)."""
        if not names:
            raise ValueError("type names to suggest from (or tag a few images) first")
        key, predictor = self._suggest_key(names)
        rows = self.store.images()
        with self._suggested_lock:
            for old in [k for k in self._suggested if k[0] != key[0]]:
                del self._suggested[old]  # another model's: never read again
            for old in [k for k in self._passes if k[0] != key[0]]:
                self._passes.pop(old).stop.set()
            found = self._suggested.setdefault(key, {})
            self._suggested.move_to_end(key)
            while len(self._suggested) > SUGGEST_KEEP:
                evicted, _ = self._suggested.popitem(last=False)
                if evicted in self._passes:
                    self._passes.pop(evicted).stop.set()
            state = self._passes.get(key)
            if state is not None and state.running:
                if progress:
                    state.listeners.append(progress)
                    progress(state.done, state.total)
                return state
            todo = [r for r in rows if r["hash"] not in found]
            state = SuggestionPass(key, total=len(todo), listeners=[progress] if progress else [])
            self._passes[key] = state
            if todo:
                state.thread = threading.Thread(target=self._run_pass, args=(state, predictor, todo, found),
                                                name="suggestions", daemon=True)
                state.thread.start()
        return state

    def _run_pass(self, state: SuggestionPass, predictor: Predictor, todo: list[dict], found: dict) -> None:
        """The pass's thread: the model over `todo` in batches, at `SUGGEST_SIDE`, each batch's
        suggestions filed in `found` as soon as it is done (the queue reads them at once)."""
        _, names, threshold = state.key
        side = min(SUGGEST_SIDE, predictor.config.min_size)
        quick = predictor.at_size(side)
        step = max(1, min(SUGGEST_BATCH, -(-len(todo) // 10)))  # batches, yet progress at least every tenth

        def report():
            for listener in list(state.listeners):
                with contextlib.suppress(Exception):  # a closed page's callback must not stop the pass
                    listener(state.done, state.total)

        try:
            for start in range(0, len(todo), step):
                if state.stop.is_set():
                    return
                report()
                batch = todo[start:start + step]
                result = self._suggest_batch(quick, batch, list(names), threshold)
                with self._suggested_lock:
                    found.update(result)
                    state.done += len(batch)
            report()
        except Exception as e:  # noqa: BLE001 - said on the Tag tab and by find_suggestions, never lost
            log.exception("the suggestion pass failed")
            state.error = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]

    def _suggest_batch(self, predictor: Predictor, rows: list[dict], names: list[str],
                       threshold: float) -> dict[str, tuple[str, ...]]:
        """{hash: names detected at `threshold` or above, best first} for these images, in one
        model call; an image that cannot be read gets none (the others still count)."""
        paths = [self.store.image_dir / r["file"] for r in rows]
        try:
            dets = predictor.predict(paths, names, threshold)
        except ImageLoadError:
            dets = []
            for path in paths:
                try:
                    dets += predictor.predict([path], names, threshold)
                except ImageLoadError as e:
                    log.warning("no suggestions for %s: %s", path.name, e)
                    dets.append(None)
        out = {}
        for row, det in zip(rows, dets):
            best: dict[str, float] = {}
            if det is not None:
                confidence = det.confidence if det.confidence is not None else []
                for name, score in zip(det.data.get("class_name", []), confidence):
                    if float(score) >= threshold:
                        best[str(name)] = max(best.get(str(name), 0.0), float(score))
            out[row["hash"]] = tuple(sorted(best, key=best.get, reverse=True))
        return out

    def _suggest_vocabulary(self, vocabulary: str | list[str]) -> list[str]:
        """The names Suggest uses: these, else the dataset's labels."""
        return parse_vocabulary(vocabulary) if _nonempty(vocabulary) else self.store.labels()

    def _found_suggestions(self, names: list[str], rows: list[dict]) -> tuple[dict[str, tuple[str, ...]], int]:
        """({hash: suggested names} found for these names with the live model, images not looked at yet)."""
        if not names:
            return {}, 0
        key, _ = self._suggest_key(names)
        with self._suggested_lock:
            found = dict(self._suggested.get(key, {}))
        return found, sum(1 for r in rows if r["hash"] not in found)

    # --- dataset -----------------------------------------------------------------------------
    @endpoint()
    def dataset(self) -> dict:
        """{"images", "tagged", "labels": {name: {"positive", "negative"}}}."""
        tagged, total = self.store.progress()
        return {"images": total, "tagged": tagged, "labels": self.store.counts()}

    @endpoint()
    def images_with_label(self, label: str) -> list[dict]:
        """Stored images tagged present with `label`: [{hash, name, path}]."""
        return [{"hash": r["hash"], "name": r["original_name"] or r["hash"][:12]}
                for r in self.store.images() if label in r["positives"]]

    @endpoint()
    def rename_label(self, old: str, new: str) -> dict:
        """Rename a label everywhere (an existing name merges); returns the dataset summary."""
        self.store.rename_label(old, new)
        return self.dataset()

    @endpoint()
    def merge_labels(self, sources: str | list[str], into: str) -> dict:
        sources = parse_vocabulary(sources) if _nonempty(sources) else []
        if not sources or not (into or "").strip():
            raise StoreError("pick labels to merge and the name to merge them into")
        self.store.merge_labels(sources, into)
        return self.dataset()

    @endpoint()
    def delete_label(self, name: str) -> dict:
        self.store.delete_label(name)
        return self.dataset()

    @endpoint(api=False)
    def import_labels(self, files: list) -> dict:
        """Tags and boxes from uploaded label files: Detic/COCO image labels, CSV, JSONL, COCO with
        boxes, Label Studio JSON (its annotations' rectangles and choices) and YOLO zips (data.yaml
        or classes.txt, labels/ and the images), with the images uploaded beside them (files or
        zips) or already in the store (matched by sha256 or name), or in an allowed server folder.
        Each file is imported whole or not at all (one transaction). Returns what happened:
        `imported` images given tags or boxes, `boxes` stored, and `messages`: one sentence per
        file saying what was found in it and what was done."""
        from . import formats

        files = [f for f in (files if isinstance(files, (list, tuple)) else [files]) if f is not None]
        paths = [_upload_path(f) for f in files]
        label_files = [p for p in paths if p and p.suffix.lower() in formats.LABEL_SUFFIXES]
        unpacked = Path(tempfile.mkdtemp(prefix="ovd-import-"))
        try:
            for p in paths:  # a YOLO zip is a label file; an export's zip holds one beside its images/
                if p and p.suffix.lower() == ".zip":
                    label_files += [p] if formats.is_yolo_zip(p) else formats.extract_label_files(p, unpacked / p.stem)
            if not label_files:
                raise StoreError("choose a label file: Detic/COCO JSON (tags or boxes), CSV, JSONL, Label Studio JSON "
                                 "or a YOLO zip (and, optionally, the images)")
            return self._import_files(label_files, [f for f, p in zip(files, paths) if p not in label_files
                                                    or p.suffix.lower() == ".zip"])
        except ValueError as e:
            raise StoreError(str(e)) from None
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)

    def _import_files(self, label_files: list[Path], images: list) -> dict:
        from train.data import DataError

        from . import formats

        uploaded = self.add_images(images)  # a zip's images too
        by_name = {}
        for h in uploaded["added"]:
            row = self.store._image(h)
            by_name.setdefault(row["original_name"], h)
        report = {"imported": 0, "boxes": 0, "images_added": len(uploaded["added"]), "missing": [],
                  "skipped": list(uploaded["skipped"]), "messages": []}
        for path in label_files:
            try:
                parsed = formats.read_label_file(path)
            except (DataError, KeyError, OSError) as e:
                raise StoreError(str(e)) from None
            tags, boxes, missing = [], {}, []
            for entry in parsed.entries:
                h = self._match_image(entry.names, entry.sha256, by_name)
                if h is None:
                    if entry.positives or entry.negatives or entry.boxes:
                        missing.append(Path(entry.names[0]).name)
                    continue
                if entry.positives or entry.negatives:
                    tags.append((h, entry.positives, entry.negatives))
                if entry.boxes:
                    row = self.store._image(h)
                    sx, sy = (row["width"], row["height"]) if entry.relative else (1, 1)
                    boxes.setdefault(h, []).extend((n, (x1 * sx, y1 * sy, x2 * sx, y2 * sy))
                                                   for n, (x1, y1, x2, y2) in entry.boxes)
            stored = self.store.import_tags(tags, boxes)
            done = len({h for h, *_ in tags} | set(boxes))
            report["imported"] += done
            report["boxes"] += stored["boxes"]
            report["missing"] += missing
            report["messages"].append(_import_sentence(path.name, parsed, tags, stored, missing))
        return report

    def _match_image(self, names: list[str], sha256: str | None, by_name: dict[str, str]) -> str | None:
        """The stored image a label file's entry means: by sha256, uploaded beside it, stored, or in
        an allowed server folder (by each of its names in turn)."""
        h = self.store.find_image(names[0], sha256) if sha256 else None
        for name in names:
            h = h or by_name.get(Path(name).name) or self.store.find_image(name)
        return h or self._from_allowed_folders(names[0])

    def _from_allowed_folders(self, name: str) -> str | None:
        for folder in self.policy.allowed_dirs:
            candidate = (folder / name).resolve()
            if (folder in candidate.parents) and candidate.is_file():
                try:
                    return self.store.add_image(candidate)
                except (ValueError, OSError):
                    return None
        return None

    @endpoint(file=True)
    def export_labels(self, fmt: str = "detic", with_images: bool = False, *, progress: Progress | None = None) -> str:
        """Write an export file (named after the dataset and today's date); returns its path.
        Formats (`EXPORT_FORMATS`): the tags as `detic` JSON or `csv`; the model's boxes on every
        image as `coco_detections` (COCO with scores), `yolo` (zip: data.yaml, classes.txt,
        labels/), `voc` (zip of Pascal VOC XML) or `label_studio` (tasks with the model's boxes as
        scored predictions and stored boxes as annotations). Images are named by their original
        names; `with_images` zips them (images/) with the labels. `progress`: see
        `detections_coco` (the tag formats are written at once)."""
        return str(self.export(fmt, progress, with_images=bool(with_images)))

    def export_name(self, what: str) -> str:
        """`<dataset>_<YYYY-MM-DD>_<what>`: the dataset is the data folder's name."""
        dataset = "".join(c if c.isalnum() or c in "-_" else "-" for c in self.data_dir.resolve().name) or "dataset"
        return f"{dataset}_{time.strftime('%Y-%m-%d')}_{what}"

    def export(self, fmt: str, progress: Progress | None = None, with_images: bool = False) -> Path:
        """A fresh file in a private temporary folder (never a path inside the data folder)."""
        from . import formats

        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"unknown export format {fmt!r}: {', '.join(EXPORT_FORMATS)}")
        out = Path(tempfile.mkdtemp(prefix="ovd-export-"))
        if fmt in ("detic", "csv"):
            what = "image_labels.json" if fmt == "detic" else "image_labels.csv"
            if not with_images:
                if fmt == "detic":
                    return atomic_write_json(out / self.export_name(what), self.store.export_detic(), indent=1)
                return atomic_write(out / self.export_name(what), self.store.export_csv())
            rows = [r for r in self.store.images() if r["positives"] or r["negatives"]]
            names = formats.export_names(rows)
            work = Path(tempfile.mkdtemp(prefix="ovd-export-work-"))
            try:
                formats.stage_images([(r, None) for r in rows], names, self.store.image_dir, work / "images")
                if fmt == "detic":
                    atomic_write_json(work / what, self.store.export_detic(names), indent=1)
                else:
                    atomic_write(work / what, self.store.export_csv(names))
                return formats.zip_folder(work, out / self.export_name(what.rsplit(".", 1)[0] + ".zip"))
            finally:
                shutil.rmtree(work, ignore_errors=True)
        names, items = self._detections(None, progress)
        what = {"coco_detections": ("coco", "detections_coco"), "yolo": ("yolo", "detections_yolo"),
                "voc": ("voc", "detections_voc"), "label_studio": ("label_studio", "label_studio")}[fmt]
        return formats.write_box_export(what[0], names, items, self.store.image_dir, out, self.export_name(what[1]),
                                        with_images=with_images, description=self._export_description(),
                                        model_version=Path(str(self.serving.source)).name or "model",
                                        annotated=formats.boxes_as_detections(self.store.boxes(), names))

    def _export_description(self) -> str:
        return f"detections of '{Path(str(self.serving.source)).name}' on {self.data_dir.resolve().name}"

    def _detections(self, score_threshold: float | None, progress: Progress | None) -> tuple[list[str], list]:
        """(the store's labels, [(image row, its detections over them)]) for every stored image."""
        names = self.store.labels()
        if not names:
            raise StoreError("no labels yet: tag some images first")
        rows, items = self.store.images(), []
        for i, row in enumerate(rows):
            if progress:
                progress(i, len(rows))
            items.append((row, self.predictor.predict(self.store.image_dir / row["file"], names, score_threshold)[0]))
        if progress:
            progress(len(rows), len(rows))
        return names, items

    @endpoint(gpu=True)
    def detections_coco(self, score_threshold: float | None = None, *, progress: Progress | None = None) -> dict:
        """The current model's detections on every stored image, over the store's labels, as COCO
        (images by original name, with `info` and `licenses`; scores on the annotations).
        It runs the model on every image: `progress(done, total)` is called before each image and
        once at the end."""
        from . import formats

        names, items = self._detections(score_threshold, progress)
        return formats.coco(names, items, formats.export_names([r for r, _ in items]), self._export_description())

    # --- training ----------------------------------------------------------------------------
    @endpoint()
    def start_training(self, iters: int = 300, image_label_rule: str = "max_size", ratio: str = "1:1",
                       base_model: str = "", box_data: str = "", box_images: str = "", eval_data: str = "",
                       eval_images: str = "", novel: str = "", label_size: int = 320, box_size: int = 640,
                       image_label_weight: float = 0.1, heads: str = "", train_backbone: str = "") -> str:
        """Snapshot the tags into a new run folder and train in the background; returns the run id.
        `heads` (light / standard / heavy) gives the run new heads of that capacity; `train_backbone`
        (frozen / last_stages / all) how much of the backbone trains; empty keeps the model's."""
        cfg, tagged = self._training_config(iters, image_label_rule, ratio, base_model, box_data, box_images,
                                            eval_data, eval_images, novel, label_size, box_size,
                                            image_label_weight, heads, train_backbone)
        return self._launch(cfg, self.store.export_detic() if tagged else None)

    @endpoint()
    def training_plan(self) -> dict:
        """What a run started now would train on and hold out: {"tagged", "heldout", "note"}."""
        tagged, heldout, note = plan_from_detic(self.store.export_detic())
        return {"tagged": tagged, "heldout": heldout, "note": note}

    @endpoint()
    def estimate_training(self, iters: int = 300, image_label_rule: str = "max_size", ratio: str = "1:1",
                          base_model: str = "", box_data: str = "", box_images: str = "", eval_data: str = "",
                          eval_images: str = "", novel: str = "", label_size: int = 320, box_size: int = 640,
                          image_label_weight: float = 0.1, heads: str = "", train_backbone: str = "") -> dict:
        """What the run these settings describe would cost on this machine, measured by a few real
        training steps in a separate process (`python -m train dryrun`): seconds per iteration per
        batch kind, peak memory, trainable parameters, and the whole run's estimated time."""
        cfg, tagged = self._training_config(iters, image_label_rule, ratio, base_model, box_data, box_images,
                                            eval_data, eval_images, novel, label_size, box_size,
                                            image_label_weight, heads, train_backbone)
        if tagged:  # the dry run reads no data: it only needs to know that tag batches will come
            cfg = cfg.replace(label_data="(the tags)", label_images=str(self.store.image_dir))
        if not cfg.model:
            cfg = cfg.replace(model=self._current_source())
        result = self.jobs.measure(cfg)
        from train.sampler import parse_ratio

        box_share, label_share = parse_ratio(cfg.ratio)
        share = {"box": box_share if cfg.box_data else 0, "label": label_share if tagged else 0}
        total = sum(share.values()) or 1
        per_iter = sum(result["seconds_per_iter"][k] * share[k] / total for k in result["seconds_per_iter"]
                       if share.get(k)) or sum(result["seconds_per_iter"].values())
        per_image = result.get("seconds_per_image") or {}
        _, n_heldout, _ = plan_from_detic(self.store.export_detic(), cfg.heldout_share) if tagged else (0, 0, "")
        once = per_image.get("cache", 0.0) * (tagged - n_heldout) + per_image.get("heldout", 0.0) * n_heldout
        return {**result, "estimated_run_s": per_iter * cfg.iters + once, "heldout_images": n_heldout,
                "tagged_images": tagged}

    def _training_config(self, iters, image_label_rule, ratio, base_model, box_data, box_images, eval_data,
                         eval_images, novel, label_size, box_size, image_label_weight, heads, train_backbone):
        """(validated RunConfig, number of tagged images): every check happens before a run exists."""
        base_model = self._model_source(base_model) if base_model else ""
        box_data, box_images, eval_data, eval_images = (
            str(self.policy.server_path(v, what)) if v else ""
            for v, what in ((box_data, "box data"), (box_images, "image folder"), (eval_data, "evaluation data"),
                            (eval_images, "image folder")))
        tagged, _ = self.store.progress()
        if not box_data and self.store.box_count():  # the imported boxes: written into the run folder by _launch
            box_data, box_images = STORED_BOXES, str(self.store.image_dir)
        if tagged == 0 and not box_data:
            raise StoreError("nothing to train on: tag some images (or import box labels) first")
        cfg = RunConfig(model=base_model or "", iters=int(iters), image_label_rule=image_label_rule,
                        image_label_weight=float(image_label_weight),
                        ratio=ratio or "1:1", box_data=box_data or None, box_images=box_images or None,
                        eval_data=eval_data or None, eval_images=eval_images or None,
                        novel=(novel or "").split(","), label_size=int(label_size), box_size=int(box_size),
                        heads=heads or "", train_backbone=train_backbone or "", device=self.device)
        return cfg, tagged

    @endpoint()
    def start_pretraining(self, iters: int = 1000, base_model: str = "", size: int = 640, batch: int = 4,
                          folder: str = "") -> str:
        """Pre-train neck, RPN and box head on the stored images and, optionally, a server folder the
        operator allows (`APP_ALLOWED_DIRS`), no labels needed (AlignDet), in the background;
        returns the run id. Its model is what "Start training" should start from."""
        extra = self.policy.server_path(folder, "folder") if folder else None
        if extra is not None and not self.policy.allowed_files(extra)[0]:
            raise StoreError(f"no images in the server folder '{Path(folder).name}'")
        if not self.store.images() and extra is None:
            raise StoreError("no images yet: add some images first (no labels needed)")
        base_model = self._model_source(base_model) if base_model else ""
        cfg = PretrainConfig(images=str(self.store.image_dir), extra_images=str(extra) if extra else None,
                             model=base_model, iters=int(iters), size=int(size), batch=int(batch),
                             device=self.device)  # validated before writing
        return self._launch(cfg)

    def _launch(self, cfg, labels: dict | None = None) -> str:
        """A new run folder holding `cfg` (and the label snapshot), started in the background;
        the folder is removed again if anything fails before the process starts."""
        run = RunDir.create(self.jobs.runs_dir)
        try:
            if labels is not None:
                cfg = cfg.replace(label_data=str(run.write_labels(labels)), label_images=str(self.store.image_dir))
            if getattr(cfg, "box_data", None) == STORED_BOXES:
                cfg = cfg.replace(box_data=str(run.write_boxes(self.store.export_boxes_coco())),
                                  box_images=str(self.store.image_dir))
            if not cfg.model:
                cfg = cfg.replace(model=self._current_source())
            run.write_config(cfg)
            return self.jobs.start(run)
        except Exception:
            shutil.rmtree(run.path, ignore_errors=True)
            raise

    def _current_source(self) -> str:
        """A folder holding the live model, so training starts from exactly what is served."""
        path = self.models_dir / "live"
        with self._lock:
            self.predictor.save_pretrained(path)
        return str(path)

    @endpoint()
    def cancel_training(self, run_id: str) -> str:
        self.jobs.cancel(run_id)
        return f"cancel requested for {run_id}; it stops after the current step with a checkpoint"

    @endpoint()
    def resume_training(self, run_id: str) -> str:
        """Continue a cancelled or failed run from its last checkpoint (or from the start)."""
        run = self.jobs.run(run_id)
        state = self.jobs.status(run_id).get("state")
        if state not in ("cancelled", "failed"):
            raise JobError(f"run {run_id} is {state}: only a cancelled or failed run can be resumed")
        return self.jobs.start(run, resume=True)

    @endpoint()
    def delete_run(self, run_id: str) -> str:
        """Delete a run that is not active and not the model being served."""
        run = self.jobs.run(run_id)
        state = self.jobs.status(run_id).get("state")
        if state in ACTIVE_STATES:
            raise JobError(f"run {run_id} is {state}: cancel it first")
        if Path(self.serving.source) in (run.path, run.served_model()):
            raise JobError(f"run {run_id} is the model being served: load another one first")
        run.delete()
        return f"deleted run {run_id}"

    @endpoint()
    def training_runs(self) -> list[dict]:
        """Every run, newest first: id, state, iteration, total, message, evaluation."""
        return self.jobs.runs()

    @endpoint()
    def training_status(self, run_id: str = "") -> dict:
        """The given run, else the active one, else the newest: status, metrics, log tail and
        evaluation. {"state": "none"} when there are no runs."""
        if not run_id:
            runs = self.jobs.runs()
            chosen = next((r for r in runs if r.get("state") in ACTIVE_STATES), runs[0] if runs else None)
            if chosen is None:
                return {"state": "none", "id": "", "metrics": [], "log": "", "evaluation": None}
            run_id = chosen["id"]
        run = self.jobs.run(run_id)
        metrics = run.metrics()
        return {**self.jobs.status(run_id), "metrics": metrics, "log": run.log_tail(),
                "evaluation": run.evaluation(), "evaluation_before": run.evaluation(before=True),
                "heldout": heldout_summary(run.heldout()),
                "image_label_choices": _choice_summary(metrics)}

    # --- model -------------------------------------------------------------------------------
    @endpoint()
    def use_model(self, source: str, confirm: bool = False) -> dict:
        """Load a model (run id, folder, preset or Hub id) and make it the live one (hot swap).

        A run serves its checkpoint that scored best on its held-out tags. When that score is
        below the starting model's (the one served when the run began), nothing changes unless
        `confirm` is true: the answer has `needs_confirmation` and a sentence stating the drop."""
        source = (source or "").strip()
        if not source:
            raise ValueError("type a preset, a local folder, a Hub id or pick a finished run")
        path = self._model_source(source)
        note = "hot-swapped"
        try:
            status = self.jobs.status(source)
        except JobError:
            status = None
        if status is not None:
            run = self.jobs.run(source)
            heldout = heldout_summary(run.heldout())
            drop = self._heldout_drop(heldout)
            if drop and not confirm:
                return {"needs_confirmation": True, "message": drop, **self.model_info()}
            if heldout and heldout.get("best_iteration") is not None:
                note += (f"; run {source}'s best checkpoint on its held-out tags (iteration "
                         f"{heldout['best_iteration']}, image-level AP {_ap(heldout['mean_before'])} → "
                         f"{_ap(heldout['mean_after'])})")
            if status.get("state") != "finished":
                note += (f"; unfinished run ({status.get('state')} at iteration {status.get('iteration', 0)} of "
                         f"{status.get('total', '?')})" + ("" if heldout and heldout.get("best_iteration") is not None
                                                           else ": its last checkpoint"))
            if drop:
                note += f"; served although {drop[0].lower()}{drop[1:]}"
        with self.policy.visitor_hub():
            new = Predictor.from_pretrained(path, device=self.device)
        with self._lock:
            self.predictor = new
            self.serving = ModelInfo(source=path, note=note)
            atomic_write_json(self.choice_file, {"source": path, "chosen": time.time()})
        return self.model_info()

    @staticmethod
    def _heldout_drop(heldout: dict | None) -> str:
        """A sentence stating how much worse a run's best checkpoint scored than its starting model
        on the held-out tags; empty when it did not score worse (or could not be scored)."""
        if not heldout or heldout.get("mean_after") is None or heldout.get("mean_before") is None:
            return ""
        before, after = heldout["mean_before"], heldout["mean_after"]
        if after >= before:
            return ""
        return (f"Its best checkpoint scores lower on the held-out tags than the model it started from: "
                f"image-level AP {_ap(before)} → {_ap(after)} ({(after - before) * 100:+.1f} points).")

    def _model_source(self, source: str) -> str:
        """A preset, a Hub id or one of this app's runs (its served checkpoint, see
        `RunDir.served_model`), as given; a server folder only when allowed."""
        from detector.hub import looks_like_repo_id
        from detector.presets import PRESETS

        with contextlib.suppress(JobError):  # one of this app's runs, by id
            return str(self.jobs.run(source).served_model())
        if source in PRESETS or (looks_like_repo_id(source) and not Path(source).exists()):
            return source
        return str(self.policy.model_folder(source))

    @endpoint()
    def capacity_choices(self) -> dict:
        """The head presets and backbone choices a run can take, with the parameters each gives the
        live model's backbone (`detector.capacity`), and what the live model has now."""
        from detector.capacity import parameter_counts, with_choices
        from detector.config import BACKBONE_CHOICES, HEAD_PRESETS

        cfg = self.predictor.model.config
        key = (cfg.backbone, cfg.embed_dim)
        if self._capacity_cache[0] != key:
            heads = {name: parameter_counts(with_choices(cfg, name))["heads"] for name in HEAD_PRESETS}
            self._capacity_cache = (key, heads)
        info = self.predictor.info()
        return {"heads": self._capacity_cache[1], "backbones": list(BACKBONE_CHOICES),
                "current": {"heads": info["heads"], "backbone": info["backbone_training"]}}

    @endpoint()
    def revision(self) -> str:
        """Changes whenever the stored images, labels or tags or the served model change: an open
        page asks for it every few seconds and refreshes what it shows only when it moved."""
        return f"{self.store.revision}.{self.model_version}"

    @endpoint()
    def model_info(self) -> dict:
        """What is being served: source, why, architecture, parameters, device, and `limits`: what
        keeps its answers from being meaningful (empty when nothing does)."""
        info = self.predictor.info()
        info.setdefault("rpn_trained", getattr(self.predictor.model.config, "rpn_trained", None))
        return {"source": self.serving.source, "note": self.serving.note, "headline": headline(self.serving.note),
                "run": self._served_run(), **info, "limits": model_limits(info)}

    def _served_run(self) -> str | None:
        """The id of this app's run the served model comes from (its folder or a checkpoint in it), if any."""
        try:
            inside = Path(self.serving.source).resolve().relative_to(self.jobs.runs_dir.resolve())
        except (ValueError, OSError):
            return None
        run_id = inside.parts[0] if inside.parts else ""
        return run_id if run_id and (self.jobs.runs_dir / run_id).is_dir() else None

    @endpoint(api=False)
    def push_to_hub(self, repo_id: str, token: str = "", private: bool = True) -> str:
        """Upload the live model (config.json + model.safetensors + a model card, README.md, with the
        run's training data and held-out scores when it comes from one). The token is used, never stored."""
        repo_id = (repo_id or "").strip()
        if not repo_id:
            raise ValueError("type a Hub repo id like 'you/my-detector'")
        token = self.policy.hub_token(token)
        with self._lock:
            predictor, source = self.predictor, self.serving.source
        try:
            return predictor.push_to_hub(repo_id, token=token, private=bool(private), card_info=self.card_info(source))
        except Exception as e:  # noqa: BLE001 - offline, bad token, no rights: one readable line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ValueError(f"could not push to '{repo_id}': {first}") from None

    def card_info(self, source: str | None = None) -> dict:
        """What the model card (`detector.model_card`) cannot know from the model: when the model
        (`source`, default the live one) comes from a training run (its folder, or its best/
        checkpoint), the run's training data and held-out scores."""
        source = Path(str(self.serving.source if source is None else source))
        run_path = next((p for p in (source, source.parent) if (p / RunDir.CONFIG).is_file()), None)
        if run_path is None:
            return {}
        run = RunDir(run_path)
        heldout = heldout_summary(run.heldout())
        info: dict = {"heldout": heldout}
        try:
            cfg = run.read_config()
        except Exception:  # noqa: BLE001 - an unreadable config only leaves the card shorter
            return info
        parts = []
        detic = read_json(cfg.label_data) if str(getattr(cfg, "label_data", "") or "").endswith(".json") else None
        if isinstance(detic, dict):
            names = [c["name"] for c in detic.get("categories", [])]
            held = f", {heldout['images']} of them held out to score the run" if heldout and heldout.get("images") \
                else ""
            parts.append(f"{len(detic.get('images', []))} images with image-level tags ({len(names)} labels: "
                         f"{', '.join(names[:30])}{', …' if len(names) > 30 else ''}){held}")
        elif getattr(cfg, "label_data", None):
            parts.append(f"image-level tags from {Path(cfg.label_data).name}")
        if getattr(cfg, "box_data", None):
            parts.append(f"box labels from {Path(cfg.box_data).name}")
        if parts:
            info["training_data"] = (f"Fine-tuned for {cfg.iters} iterations (run {run.id}) on "
                                     + "; ".join(parts) + ".")
        return info


def headline(note: str) -> str:
    """Why this model is served, in one plain sentence (the note itself holds the details)."""
    note = str(note or "")
    if note.startswith("offline model:"):
        text = ("The built-in offline model is served, because the better COCO + CLIP model could not be "
                "downloaded.")
        return text + (" The model chosen last could not be loaded either." if "could not be loaded" in note else "")
    if " unavailable: using 'offline'" in note:
        return "The built-in offline model is served, because the model asked for could not be loaded."
    first = note.split("; ")[0].split(" (")[0].strip()
    return first[:1].upper() + first[1:] + ("." if first and not first.endswith(".") else "")


def _ap(value: float | None) -> str:
    return "not measurable" if value is None else f"{value:.2f}"


def _choice_summary(metrics: list[dict]) -> dict | None:
    """Mean of Detic's diagnostics of the proposals image labels trained (relative size, centre,
    how often the whole-image box), over the run's logged image-label iterations."""
    keys = sorted({k for m in metrics for k in m if k.startswith("stats_")})
    if not keys:
        return None
    return {k[len("stats_"):]: round(sum(m[k] for m in metrics if k in m) / sum(1 for m in metrics if k in m), 4)
            for k in keys}


HOW_TO_GET_WEIGHTS = ("Get real weights: on a machine with internet the app loads the 'coco-clip' preset; "
                      "offline, fill its caches as in docs/models.md (\"Running fully offline\"). Or tag images "
                      "and train on the Train tab, then use that run's model.")


def model_limits(info: dict) -> list[str]:
    """What is missing for the served model to give meaningful answers, one sentence each, from
    `Predictor.info()` (fields read with .get: older and newer predictors both work)."""
    limits = []
    if info.get("backbone_pretrained") is False:
        limits.append("The backbone's weights are random (no pre-trained weights were loaded).")
    if info.get("rpn_trained") is False and "selective search" not in str(info.get("proposals") or ""):
        limits.append("The proposal network (RPN) is untrained: boxes are not real object locations.")
    if not info.get("trained_class_names") and not info.get("region_scoring") and not info.get("region_scorer"):
        limits.append("The classifier head has never been trained and there are no region scores: names and "
                      "confidences are random, not what is in the image.")
    if limits:
        limits.append(HOW_TO_GET_WEIGHTS)
    return limits


def queue_filter(show: str, suggested: dict[str, tuple[str, ...]] | None = None) -> Callable[[dict], bool]:
    """Which stored images (rows) the Tag queue shows: "all", "untagged" (no tags at all),
    "label:NAME" (tagged present with NAME; a label that no longer exists matches none) or
    "suggestion:NAME": images to review for NAME, those where the model suggests it (`suggested`:
    {hash: names}, from `AppService.find_suggestions`) and that have no tag NAME yet, present or not."""
    show = (show or "all").strip() or "all"
    if show == "all":
        return lambda row: True
    if show == "untagged":
        return lambda row: not row["positives"] and not row["negatives"]
    if show.startswith("label:"):
        name = show[len("label:"):]
        return lambda row: name in row["positives"]
    if show.startswith("suggestion:"):
        name = show[len("suggestion:"):].strip().casefold()  # labels compare case-insensitively
        found = {h: {n.casefold() for n in names} for h, names in (suggested or {}).items()}
        return lambda row: name in found.get(row["hash"], ()) and \
            name not in {t.casefold() for t in (*row["positives"], *row["negatives"])}
    raise ValueError(f"unknown filter {show!r}: all, untagged, label:NAME or suggestion:NAME")


def _import_sentence(file: str, parsed, tags: list, stored: dict, missing: list[str]) -> str:
    """What one label file held and what its import did, in one sentence."""
    found_tags = sum(1 for e in parsed.entries if e.positives or e.negatives)
    found_box_images = sum(1 for e in parsed.entries if e.boxes)
    found = [f"{parsed.box_count} box(es) on {found_box_images} image(s)"] if parsed.box_count else []
    found += [f"image-level labels for {found_tags} image(s)"] if found_tags else []
    done = []
    if parsed.box_count:
        done.append(f"stored {stored['boxes']} box(es) on {stored['box_images']} image(s)")
    if found_tags:
        done.append(f"tags for {len(tags)} image(s)")
    if stored.get("dropped"):
        done.append(f"dropped {stored['dropped']} box(es) empty or outside their image")
    if missing:
        done.append(f"{len(missing)} image(s) not found here (upload them with the file)")
    text = f"'{file}' ({parsed.kind}): " + (" and ".join(found) if found else "no labels found")
    text += ("; " + "; ".join(done)) if done else ""
    return text + "".join(f"; {n}" for n in parsed.notes) + "."


def _upload_path(f) -> Path | None:
    """The local path of an uploaded file (Gradio gives str / FileData / tempfile objects)."""
    if isinstance(f, (bytes, bytearray)) or f is None:
        return None
    if isinstance(f, (str, Path)):
        return Path(f)
    return Path(getattr(f, "path", None) or getattr(f, "name", None) or str(f))


def _nonempty(value) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip(" ,;\n"))
    return any(str(v).strip() for v in value)

