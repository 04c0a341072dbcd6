"""Training runs: planning, estimating and starting fine-tuning or pre-training in the
background, cancelling, resuming, deleting and reading their status. A part of `AppService`."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from detector.files import atomic_write_json
from train.heldout import heldout_summary, plan_from_detic
from train.run_config import PretrainConfig, RunConfig
from train.run_dir import ACTIVE_STATES, RunDir

from .jobs import JobError
from .service_base import endpoint
from .store import StoreError

# A run's box data when the store has boxes and no box file is given: `_launch` writes them into
# the run folder as COCO (`RunDir.write_boxes`) and the run trains on them beside the tags.
STORED_BOXES = "(the stored boxes)"
START_MODEL = "start_model"  # in a run's folder: the model it started from (the one served when it started)
STARTED_FROM = "served_as.json"  # in START_MODEL: the source that model was served as ("Use" compares)


class TrainingMixin:
    """Training runs; uses `self.store`, `self.jobs`, `self.policy`, the live model and
    `self._model_source` (set by `AppService`)."""

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
        with tempfile.TemporaryDirectory(dir=self.models_dir, prefix="measure-") as folder:
            if not cfg.model:  # the live model, in a folder of this measurement's own
                cfg = cfg.replace(model=self._current_source(Path(folder) / START_MODEL))
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
        once += result.get("start_s", 0.0)  # the run's process starts and loads the model as the dry run's did
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
                cfg = cfg.replace(model=self._current_source(run.path / START_MODEL))
            run.write_config(cfg)
            return self.jobs.start(run)
        except Exception:
            shutil.rmtree(run.path, ignore_errors=True)
            raise

    def _current_source(self, path: Path) -> str:
        """The live model saved in `path`, in the run's own folder, so training starts from exactly
        what is served, and so does a resume before its first checkpoint (one folder shared by all
        runs was overwritten by the next start: a resumed run began from another model)."""
        with self._lock:
            self.predictor.save_pretrained(path)
            atomic_write_json(path / STARTED_FROM, {"source": self.serving.source})
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


def _choice_summary(metrics: list[dict]) -> dict | None:
    """Mean of Detic's diagnostics of the proposals image labels trained (relative size, centre,
    how often the whole-image box), over the run's logged image-label iterations."""
    keys = sorted({k for m in metrics for k in m if k.startswith("stats_")})
    if not keys:
        return None
    return {k[len("stats_"):]: round(sum(m[k] for m in metrics if k in m) / sum(1 for m in metrics if k in m), 4)
            for k in keys}
