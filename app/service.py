"""Everything the app does, as plain functions over plain values (no Gradio): the UI, the named
API endpoints and the tests all call these.

Holds the label store, the training-job runner and the live `Predictor`; swapping the model is
one reference assignment under a lock, so requests in flight finish on the model they started
with and the next request sees the new one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from detector import Predictor
from detector.annotate import annotate, detections_to_records
from detector.images import load_image
from detector.vocabulary import parse_vocabulary
from train.finetune import FinetuneConfig

from .drawing import draw_assignment
from .jobs import TrainingJobs
from .store import IMAGE_SUFFIXES, LabelStore, StoreError

log = logging.getLogger(__name__)
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


class AppService:
    def __init__(self, data_dir: str | Path | None = None, model: str | None = None,
                 predictor: Predictor | None = None, device: str | None = None):
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.store = LabelStore(self.data_dir)
        self.jobs = TrainingJobs(self.data_dir / "runs")
        self.models_dir = self.data_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self._lock = threading.Lock()
        if predictor is None:
            predictor, note = self._load_default(model)
        else:
            note = "given"
        self.predictor = predictor
        self.model_info = ModelInfo(source=model or "auto", note=note)

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
    def detect(self, image, vocabulary, score_threshold=None, nms_threshold=None, max_detections=None):
        """-> (annotated RGB array, detection records)."""
        loaded = load_image(image)
        predictor = self.predictor
        det = predictor.predict(loaded.array, vocabulary, score_threshold, nms_threshold,
                                int(max_detections) if max_detections else None)[0]
        drawn = annotate(loaded.array, det)  # drawn on the (possibly downscaled) loaded image
        det.xyxy = det.xyxy * loaded.scale  # reported in the original image's pixels
        return drawn, detections_to_records(det)

    def assign(self, image, tags, vocabulary=None, num_proposals: int = 50):
        """-> (drawing of the proposals and each rule's choice, rows [rule, proposal, box, labels])."""
        loaded = load_image(image)
        tags = parse_vocabulary(tags)
        a = self.predictor.assign(loaded.array, tags, vocabulary or None, num_proposals)
        rows = [[rule, idx if idx < len(a.proposals) - 1 else "whole image",
                 [round(float(v), 1) for v in a.proposals[idx]], ", ".join(names)]
                for rule, choices in a.rules.items() for idx, names in choices]
        return draw_assignment(loaded.array, a), rows

    # --- tagging -----------------------------------------------------------------------------
    def add_images(self, files: list) -> dict:
        """Add image files, bytes or zip archives; returns {added: [hashes], skipped: [reasons]}."""
        added, skipped = [], []
        for f in files or []:
            path = Path(getattr(f, "name", f)) if not isinstance(f, (bytes, bytearray)) else None
            if path is not None and path.suffix.lower() == ".zip":
                a, s = self._add_zip(path)
                added += a
                skipped += s
                continue
            try:
                added.append(self.store.add_image(f if path is None else path))
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
                skipped.append(f"{path.name if path else 'upload'}: {e}")
        return {"added": list(dict.fromkeys(added)), "skipped": skipped}

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
                    except Exception as e:  # noqa: BLE001
                        skipped.append(f"{m.filename}: {e}")
        except zipfile.BadZipFile:
            skipped.append(f"{path.name}: not a valid zip file")
        return added, skipped

    def add_folder(self, folder: str) -> dict:
        folder_path = Path(folder).expanduser()
        if not folder_path.is_dir():
            raise StoreError(f"not a folder on the server: {folder}")
        files = sorted(p for p in folder_path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return self.add_images(files)

    def queue(self) -> list[dict]:
        return self.store.images()

    def tag(self, image_hash: str, positives, negatives=()) -> dict:
        pos = parse_vocabulary(positives) if _nonempty(positives) else []
        neg = parse_vocabulary(negatives) if _nonempty(negatives) else []
        return self.store.set_tags(image_hash, pos, neg)

    def suggest(self, image_hash: str, vocabulary, score_threshold: float | None = None) -> list[str]:
        """Names the current model detects in the image, best first, for a person to accept."""
        det = self.predictor.predict(str(self.store.image_path(image_hash)), vocabulary, score_threshold)[0]
        best: dict[str, float] = {}
        for name, score in zip(det.data["class_name"], det.confidence):
            best[str(name)] = max(best.get(str(name), 0.0), float(score))
        return sorted(best, key=best.get, reverse=True)

    # --- dataset -----------------------------------------------------------------------------
    def export(self, fmt: str) -> Path:
        """Write an export file under DATA_DIR/exports and return its path."""
        out = self.data_dir / "exports"
        out.mkdir(parents=True, exist_ok=True)
        if fmt == "detic":
            path = out / "image_labels.json"
            path.write_text(json.dumps(self.store.export_detic(), ensure_ascii=False, indent=1), encoding="utf-8")
        elif fmt == "csv":
            path = out / "image_labels.csv"
            path.write_text(self.store.export_csv(), encoding="utf-8")
        elif fmt == "coco_detections":
            path = out / "detections_coco.json"
            path.write_text(json.dumps(self.detections_coco(), ensure_ascii=False), encoding="utf-8")
        else:
            raise ValueError(f"unknown export format {fmt!r}: detic, csv or coco_detections")
        return path

    def detections_coco(self, score_threshold: float | None = None) -> dict:
        """The current model's detections on every stored image, over the store's labels, as COCO."""
        names = self.store.labels()
        if not names:
            raise StoreError("no labels yet: tag some images first")
        images, anns = [], []
        for i, row in enumerate(self.store.images(), 1):
            images.append({"id": i, "file_name": row["file"], "width": row["width"], "height": row["height"]})
            det = self.predictor.predict(str(self.store.image_dir / row["file"]), names, score_threshold)[0]
            for (x1, y1, x2, y2), s, c in zip(det.xyxy, det.confidence, det.class_id):
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "score": float(s),
                             "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                             "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0})
        return {"images": images, "annotations": anns,
                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}

    # --- training ----------------------------------------------------------------------------
    def start_training(self, iters: int = 300, image_loss: str = "max_size", ratio: str = "1:1",
                       base_model: str | None = None, box_data: str | None = None, box_images: str | None = None,
                       eval_data: str | None = None, eval_images: str | None = None, novel: str | None = None,
                       label_size: int = 320, box_size: int = 640) -> str:
        """Export the tags and launch `train finetune` in the background; returns the run id."""
        tagged, _ = self.store.progress()
        if tagged == 0 and not box_data:
            raise StoreError("nothing to train on: tag some images (or give a box-labelled COCO file) first")
        run = self.jobs.new_run_dir()
        source = base_model or self._current_source()
        cfg = FinetuneConfig(
            out=str(run), model=source, iters=int(iters), image_loss=image_loss, ratio=ratio,
            label_data=str(self.store.write_training_files(run)) if tagged else None,
            label_images=str(self.store.image_dir) if tagged else None,
            box_data=box_data or None, box_images=box_images or None, eval_data=eval_data or None,
            eval_images=eval_images or None, label_size=int(label_size), box_size=int(box_size),
            novel=[n.strip() for n in novel.split(",") if n.strip()] if novel else None,
            checkpoint_every=max(50, int(iters) // 4), log_every=max(1, min(10, int(iters) // 20)),
            warmup=min(100, max(1, int(iters) // 10)), device=self.device,
        )
        try:
            return self.jobs.start(cfg)
        except Exception:
            import shutil

            shutil.rmtree(run, ignore_errors=True)
            raise

    def _current_source(self) -> str:
        """A folder holding the live model, so training starts from exactly what is served."""
        path = self.models_dir / "live"
        with self._lock:
            self.predictor.save_pretrained(path)
        return str(path)

    def use_model(self, source: str) -> dict:
        """Load a model (run id, folder, preset or Hub id) and make it the live one (hot swap)."""
        run = self.jobs.runs_dir / source
        path = str(run) if run.is_dir() else source
        new = Predictor.from_pretrained(path, device=self.device)
        with self._lock:
            self.predictor = new
            self.model_info = ModelInfo(source=path, note="hot-swapped")
        return self.info()

    def info(self) -> dict:
        return {"source": self.model_info.source, "note": self.model_info.note, **self.predictor.info()}

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool = True) -> str:
        """Upload the live model (config.json + model.safetensors). The token is used, never stored."""
        from huggingface_hub import HfApi

        token = token or os.environ.get("HF_TOKEN")
        if not token:
            raise ValueError("a Hugging Face token is needed: type one or set HF_TOKEN")
        folder = self.models_dir / "push"
        self.predictor.save_pretrained(folder)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="upload detector")
        return str(getattr(commit, "commit_url", commit))


def _nonempty(value) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip(" ,;\n"))
    return any(str(v).strip() for v in value)

