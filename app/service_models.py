"""The served model: which one (and why), loading the default or the last choice at start,
hot swaps (`use_model`), what it can and cannot do, and pushing it to the Hub. A part of `AppService`.

Swapping the model is one reference assignment under a lock, so requests in flight finish on the
model they started with and the next request sees the new one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from detector import Predictor
from detector.files import atomic_write_json, read_json
from train.heldout import MIN_TAGGED_FOR_HELDOUT, caveat, heldout_summary
from train.run_dir import RunDir

from .jobs import JobError
from .service_base import endpoint
from .service_training import START_MODEL, STARTED_FROM

log = logging.getLogger(__name__)


@dataclass
class ModelInfo:
    source: str
    note: str = ""


class ModelsMixin:
    """The served model; uses `self.jobs`, `self.policy`, `self.models_dir`, `self.device` and
    `self._lock` (set by `AppService`)."""

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
            predictor, note, served = self._load_default(None)
            return predictor, f"{note}; the last chosen model '{Path(source).name}' could not be loaded " \
                              f"({str(e).splitlines()[0][:120]})", served
        return predictor, f"restored after a restart: the model last chosen on {when}", source

    def _load_default(self, model: str | None) -> tuple[Predictor, str, str]:
        """`auto` (default): the COCO + CLIP preset when its weights can be fetched, otherwise
        the packaged offline model: -> (predictor, the reason in one line, what is served: the
        preset `auto` chose, so the header and exports name the model, not the rule)."""
        from detector import HubUnavailableError
        from detector.presets import FIRST_CHOICE

        source = model or "auto"
        if source == "auto":
            try:
                predictor = Predictor.from_pretrained(FIRST_CHOICE, device=self.device)
                if getattr(predictor.model, "init_report", None) is None:
                    raise HubUnavailableError("the COCO detector weights could not be downloaded")
                return predictor, f"'{FIRST_CHOICE}': COCO localisation + CLIP region scores", FIRST_CHOICE
            except HubUnavailableError as e:
                reason = str(e).split(" (")[0]
                log.warning("%s unavailable (%s): serving the packaged offline model", FIRST_CHOICE, reason)
                return (Predictor.from_pretrained("offline", device=self.device),
                        f"offline model: {FIRST_CHOICE} unavailable ({reason})", "offline")
        try:
            return Predictor.from_pretrained(source, device=self.device), f"loaded '{source}'", source
        except HubUnavailableError as e:
            log.warning("%s; falling back to the packaged offline model", e)
            return (Predictor.from_pretrained("offline", device=self.device), f"'{source}' unavailable: using 'offline'",
                    "offline")

    @endpoint()
    def use_model(self, source: str, confirm: bool = False) -> dict:
        """Load a model (run id, folder, preset or Hub id) and make it the live one (hot swap).

        A run serves its checkpoint that scored best on its held-out tags. When that score is
        below the starting model's (the one served when the run began), or the run has no
        held-out score at all (too few tagged images to hold any out), nothing changes unless
        `confirm` is true: the answer has `needs_confirmation` and a sentence saying why."""
        source = (source or "").strip()
        if not source:
            raise ValueError("type a preset (offline, tiny, coco-clip), a Hub id (owner/name), a run id (Train tab) "
                             "or a server folder")
        path = self._model_source(source)
        note = "hot-swapped"
        try:
            status = self.jobs.status(source)
        except JobError:
            status = None
        if status is not None:
            run = self.jobs.run(source)
            if not (Path(path) / "model.safetensors").exists():  # "serve it anyway" then named a server path
                raise JobError(f"run {source} has no checkpoint yet ({status.get('state')} at iteration "
                               f"{status.get('iteration', 0)} of {status.get('total', '?')}): nothing to serve")
            heldout = heldout_summary(run.heldout())
            scored_on_boxes = run.evaluation() is not None and run.evaluation(before=True) is not None
            drop = self._heldout_drop(heldout) or ("" if scored_on_boxes else self._unscored(heldout)) \
                or self._not_compared_with_served(run, path)
            if drop and not confirm:
                return {"needs_confirmation": True, "message": drop, **self.model_info()}
            if heldout and heldout.get("best_iteration") is not None:
                change = heldout.get("change")
                verdict = ("" if change is None else ": better" if change > 0 else ": no better than the model it "
                           "started from" if change == 0 else "")
                note += (f"; run {source}'s best checkpoint on its held-out tags (iteration "
                         f"{heldout['best_iteration']}, image-level AP {_ap(heldout['mean_before'])} → "
                         f"{_ap(heldout['mean_after'])}{verdict})")
                if cannot_tell := caveat(heldout):
                    note += f". {cannot_tell}"
            if status.get("state") != "finished":
                note += (f"; unfinished run ({status.get('state')} at iteration {status.get('iteration', 0)} of "
                         f"{status.get('total', '?')})" + ("" if heldout and heldout.get("best_iteration") is not None
                                                           else ": its last checkpoint"))
            if drop:
                note = note.rstrip(".") + f"; served although {drop[0].lower()}{drop[1:]}"
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

    def _not_compared_with_served(self, run: RunDir, path: str) -> str:
        """A sentence when the model served now is not the one the run started from (another run
        was chosen since): the run's verdict then says nothing about the served model, and an old
        run "better" than its own start had replaced a later, better one unasked. Empty when they
        are the same, or the run predates the record."""
        started = (read_json(run.file(START_MODEL) / STARTED_FROM) or {}).get("source")
        if not started or started == self.serving.source or Path(path) == Path(self.serving.source):
            return ""
        return (f"It was compared with the model served when it started ({self._source_name(started)}), not with "
                f"the one served now ({self._source_name(self.serving.source)}): which of the two is better is "
                "not known.")

    def _source_name(self, source: str) -> str:
        """A served source as people read it: "run ID" for this app's runs, a folder's name (no
        server path), else as given (a preset, a Hub id)."""
        run_id = self._run_of(source)
        return f"run {run_id}" if run_id else Path(source).name if Path(source).is_absolute() else source

    @staticmethod
    def _unscored(heldout: dict | None) -> str:
        """A sentence saying a run cannot be compared with the model it started from (no held-out
        score before and after); empty when it can."""
        if heldout and heldout.get("mean_after") is not None and heldout.get("mean_before") is not None:
            return ""
        note = str(heldout.get("note") or "") if heldout else ""
        why = f"{note[0].upper()}{note[1:]}" if note else "It has no held-out score"
        return (f"{why}: nothing says it is better than the model it started from (with at least "
                f"{MIN_TAGGED_FOR_HELDOUT} tagged images a run holds some out and scores itself).")

    def _model_source(self, source: str) -> str:
        """A preset, a Hub id or one of this app's runs (its served checkpoint, see
        `RunDir.served_model`), as given; a server folder only when allowed."""
        from detector.hub import looks_like_repo_id
        from detector.presets import PRESETS

        with contextlib.suppress(JobError):  # one of this app's runs, by id
            return str(self.jobs.run(source).served_model())
        # "owner/name" is a Hub id unless it is an allowed server folder: whether such a path exists
        # elsewhere on the server is not a visitor's business (the answers differed, and told them)
        if source in PRESETS or (looks_like_repo_id(source)
                                 and not (self.policy.allows(source) and Path(source).exists())):
            return source
        if not any(sep in source for sep in ("/", "\\", ".")):  # a bare word: no folder, Hub id or run
            raise ValueError(f"unknown model {source!r}: type a preset ({', '.join(PRESETS)}), a Hub id (owner/name), "
                             "a run id (Train tab) or a server folder")
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
        return self._run_of(self.serving.source)

    def _run_of(self, source: str) -> str | None:
        """The id of this app's run a model source lies in, if any."""
        try:
            inside = Path(source).resolve().relative_to(self.jobs.runs_dir.resolve())
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
