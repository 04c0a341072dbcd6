"""Suggestions: the names the live model detects in an image (`suggest`) and the background pass
over every stored image the Tag queue's "suggestion:NAME" filter reads. A part of `AppService`."""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field

from detector import ImageLoadError, Predictor
from detector.vocabulary import parse_vocabulary

from .service_base import Progress, _nonempty, endpoint
from .service_tagging import queue_filter

log = logging.getLogger(__name__)

# The "with suggestion" queue filter: the model runs over the stored images in a background pass,
# in batches of at most this many (smaller ones for a few images, so progress shows at least every
# tenth of them), and the suggestions of the last few (model, names, threshold) are kept in memory.
SUGGEST_BATCH = 8
SUGGEST_KEEP = 4
# The pass's shorter image side (at most the model's own): the offline preset at its 640 costs
# about 2.5x as much per image, for the same names on the test photos (see `Predictor.at_size`).
SUGGEST_SIDE = 384


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


class SuggestionsMixin:
    """Suggestions; uses `self.store` and the served model (`self._served`), and keeps what it found
    in `self._suggested` / `self._passes` under `self._suggested_lock` (set by `AppService`)."""

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
