"""Detic fine-tuning from box labels and image-level labels: the engine behind in-app retraining.

`finetune(RunConfig(...), run_dir)` is what the CLI (and so the app's background job) and the
experiments call; every file it reads or writes in the run folder goes through `RunDir`. It mixes box batches (standard detection losses) and image-label batches (Detic's
image-label loss, lambda = 0.1) at a fixed ratio, trains with AdamW + warm-up + cosine and
gradient clipping, logs JSONL metrics, checkpoints atomically, resumes exactly, stops cleanly on
SIGINT/SIGTERM or a `CANCEL` file, and runs under `torchrun` with DDP.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from detector.capacity import rebuild
from detector.embedding_cache import VocabularyEmbedder
from detector.images import ImageLoadError
from detector.predictor import autocast_for
from detector.presets import load_detector

from .data import DataError, load_resized, read_box_dataset, read_label_dataset, transform_boxes, vocabulary_of
from .heldout import ENSEMBLE_WEIGHTS, HeldoutScorer, heldout_summary, rank_key, split_heldout
from .loop import Loop, Stopped, adamw, device_for, restore_signals, stop_on_signals
from .run_config import RunConfig
from .run_dir import RunDir
from .sampler import MixedSampler, parse_ratio
from .tag_features import CachedTagImage, cache_tag_images, can_cache, tag_step

log = logging.getLogger("train")
ADAPTER_LR = 0.02  # learning rate of the name mapping's logits (train.tag_features.adapter_loss)


class TrainStep(nn.Module):
    """One module whose forward covers both kinds of batch, so DDP can wrap it."""

    def __init__(self, model: nn.Module, image_loss: dict | None = None):
        super().__init__()
        self.model = model
        self.image_loss = image_loss or {}  # rule / weight / scope of the image-label loss

    def forward(self, kind: str, images, payload, class_embeddings):
        if kind == "box":
            return self.model(images, payload, class_embeddings)
        positives, negatives = payload
        return self.model.image_label_loss(images, positives, class_embeddings, negatives=negatives,
                                           **self.image_loss)


def _setup_logging(run: RunDir, rank: int) -> logging.Handler | None:
    if rank != 0:
        return None
    handler = logging.FileHandler(run.file(RunDir.TRAIN_LOG), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("train", "detector"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    return handler


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _batch(kind, idx, samples, cfg, rng, names_index, box_index, device, skipped):
    images, payload = [], []
    for i in idx:
        s = samples[i]
        try:
            size = cfg.box_size if kind == "box" else cfg.label_size
            img, scale, flipped, _ = load_resized(s.path, size, rng, cfg.jitter)
        except ImageLoadError as e:
            skipped.add(str(s.path))
            log.warning("skipping unreadable image: %s", e)
            continue
        images.append(img.to(device))
        if kind == "box":
            payload.append({"boxes": transform_boxes(s.boxes, scale, flipped, img.shape[-1]).to(device),
                            "labels": torch.tensor([box_index[n.casefold()] for n in s.names],
                                                   dtype=torch.int64, device=device)})
        else:
            payload.append(([names_index[n.casefold()] for n in s.positives],
                            [names_index[n.casefold()] for n in s.negatives]))
    if kind == "label":  # (positives per image, negatives per image)
        payload = ([p for p, _ in payload], [n for _, n in payload])
    return images, payload


def run_with_status(run_dir: str | Path | RunDir, body) -> dict:
    """The frame every training command runs in: the run folder, the process group, the run's log
    file, a "failed" status with the reason when `body(run, rank, world)` raises, and a "cancelled"
    one when a signal stops it before its step loop (`loop.stop_on_signals`)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    rank, world = _distributed()
    handler = _setup_logging(run, rank)
    previous = stop_on_signals()
    try:
        result = body(run, rank, world)
        if world > 1 and dist.is_initialized():
            # every rank took the last barrier: the group is closed before the process exits (left to
            # the interpreter's exit, gloo's threads aborted one rank now and then: exit code -6)
            dist.destroy_process_group()
        return result
    except Stopped as e:
        if rank == 0:
            run.write_status("cancelled", message=str(e), pid=os.getpid())
        raise
    except BaseException as e:
        if rank == 0:
            run.write_status("failed", message=f"{type(e).__name__}: {e}"[:500], pid=os.getpid())
        raise
    finally:
        restore_signals(previous)
        if handler is not None:
            for name in ("train", "detector"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()


def finetune(cfg: RunConfig, run_dir: str | Path | RunDir, resume: bool = False, on_progress=None) -> dict:
    """Run (or, with `resume`, continue) training into `run_dir`; returns the final metrics dict.

    The config is (re)written into the run folder, so a run records what it last ran with."""
    return run_with_status(run_dir, lambda run, rank, world: _finetune(cfg, run, resume, rank, world, on_progress))


class _FinetuneStep:
    """What both ways of stepping share: checkpoints, held-out scoring and the best checkpoint."""

    kind = "label"

    def __init__(self, run: RunDir, model, optimizer, names: list[str], trained_boxes: bool,
                 heldout: HeldoutRecord | None):
        self.run, self.model, self.optimizer, self.names = run, model, optimizer, names
        self.trained_boxes = trained_boxes
        self.trained_names: set[str] = set()
        self.heldout = heldout

    def after_update(self, it: int) -> dict[str, float]:
        return {}

    def save(self, it: int) -> None:
        _save(self.run, self.model, self.optimizer, it, self.names, self.trained_names, self.trained_boxes)

    def evaluate(self, it: int) -> None:
        if self.heldout is not None:
            self.heldout.score(self.model, it, self.run)


class _DeticStep(_FinetuneStep):
    """Detic's full path: every step runs its images through the whole model (jitter, flips)."""

    def __init__(self, train_step, sampler, box, labels, cfg, names_index, box_index, device, emb, box_emb,
                 world, skipped, **common):
        super().__init__(**common)
        self.train_step, self.sampler, self.box, self.labels, self.cfg = train_step, sampler, box, labels, cfg
        self.names_index, self.box_index, self.device = names_index, box_index, device
        self.emb, self.box_emb, self.world, self.skipped = emb, box_emb, world, skipped
        self.images_per_step = cfg.label_batch if labels else cfg.box_batch

    def losses(self, it, rng):
        kind, idx = self.sampler.batch(it)
        self.kind = kind
        self.images_per_step = self.cfg.box_batch if kind == "box" else self.cfg.label_batch
        samples = self.box if kind == "box" else self.labels
        images, payload = _batch(kind, idx, samples, self.cfg, rng, self.names_index, self.box_index,
                                 self.device, self.skipped)
        if self.world > 1:  # every rank must take part in the step, or none
            have = torch.tensor([len(images)], device=self.device)
            dist.all_reduce(have, op=dist.ReduceOp.MIN)
            empty = have.item() == 0
        else:
            empty = not images
        if empty:
            return None, {}
        for i in idx:
            self.trained_names.update(n.casefold() for n in (samples[i].names if kind == "box" else samples[i].positives))
        with autocast_for(self.device):
            losses = self.train_step(kind, images, payload, self.box_emb if kind == "box" else self.emb)
        stats = self.model.image_label_stats if kind == "label" else {}
        return losses, {f"stats_{k}": v for k, v in stats.items()}


class _CachedTagStep(_FinetuneStep):
    """Tags only, frozen backbone and neck: steps on cached candidates (`train.tag_features`)."""

    def __init__(self, cached: dict[int, CachedTagImage], sampler, cfg, device, emb, adapter=None, **common):
        super().__init__(**common)
        self.cached, self.sampler, self.cfg, self.device, self.emb = cached, sampler, cfg, device, emb
        self.adapter = adapter
        self.images_per_step = cfg.label_batch

    def losses(self, it, rng):
        _, idx = self.sampler.batch(it)
        batch = [self.cached[i] for i in idx if i in self.cached]
        if not batch:
            return None, {}
        for item in batch:
            self.trained_names.update(self.names[k].casefold() for k in item.positives)
        with autocast_for(self.device):
            losses, stats = tag_step(self.model, batch, self.emb, self.device, self.cfg.image_label_rule,
                                     self.cfg.image_label_weight, self.cfg.image_label_scope, self.adapter)
        return losses, {f"stats_{k}": v for k, v in stats.items()}


class HeldoutRecord:
    """The run's held-out tags: scored before training and at each checkpoint; the best
    checkpoint is kept as the run's `best/` model (`RunDir.save_best`)."""

    def __init__(self, scorer: HeldoutScorer, note: str, start_trained: list[str], record: dict | None = None):
        self.scorer, self.note, self.start_trained = scorer, note, list(start_trained)
        self.record = record or {"note": note, "images": len(scorer.samples), "before": None, "checkpoints": [],
                                 "best": None, "files": sorted(s.path.name for s in scorer.samples)}

    def trained_names(self, model) -> list[str]:
        return list(model.config.trained_class_names)

    def score_before(self, model, run: RunDir) -> None:
        self.record["before"] = self.scorer.report(model, self.start_trained)
        self.record["images"] = len(self.scorer.samples)
        self.record["skipped"] = list(self.scorer.skipped)
        run.write_heldout(self.record)

    def score(self, model, it: int, run: RunDir) -> None:
        if any(c["iteration"] == it for c in self.record["checkpoints"]):
            return
        run.write_status("running", message=f"scoring iteration {it} on {len(self.scorer.samples)} held-out images")
        # a model proposing with selective search is served with w = 1 only (`ensemble_weights`)
        weights = (1.0,) if model.uses_selective_search else ENSEMBLE_WEIGHTS
        report, w = self.scorer.best_report(model, self.trained_names(model), weights)
        self.record["checkpoints"].append({"iteration": it, **report, "ensemble_weight_trained": w})
        best = self.record.get("best")
        if report["mean"] is not None and (best is None or rank_key(report) > tuple(best.get("rank", (best["mean"], -1.0)))):
            kept = model.config.ensemble_weight_trained
            if w is not None:  # the best checkpoint is served with the weight it was scored with
                model.config.ensemble_weight_trained = w
            run.save_best(model, it)
            model.config.ensemble_weight_trained = kept
            self.record["best"] = {"iteration": it, "mean": report["mean"], "rank": list(rank_key(report)),
                                   "ensemble_weight_trained": w}
        run.write_heldout(self.record)
        log.info("held-out image-level AP at iteration %d: %s", it,
                 "not measurable" if report["mean"] is None else f"{report['mean']:.3f}")


@dataclass
class _Data:
    """What a run trains on: box-labelled and tagged samples, the tagged images held out to score
    it (and why), and the vocabulary over both."""

    box: list
    labels: list
    heldout: list
    heldout_note: str
    names: list[str]
    names_index: dict[str, int]


def _finetune(cfg: RunConfig, run: RunDir, resume: bool, rank: int, world: int, on_progress) -> dict:
    """One run, in named steps: the data, the model (new or resumed), the class embeddings, the
    held-out scorer, the optimizer, the kind of step, the shared loop (`train.loop.Loop`) and what
    the run leaves in its folder."""
    t_start = time.time()
    cfg.validate()
    if rank == 0:
        run.write_config(cfg)
        # a resume shows where it goes on from (the count went 50 -> 0 -> 50 while it read its data)
        run.write_status("running", iteration=run.resumes_at() if resume else 0, total=cfg.iters,
                         message="reading the labels", started=t_start, pid=os.getpid())
    data = _read_data(cfg)
    device = device_for(cfg, world)
    model, start_it, resume_from = _start_model(cfg, run, resume, rank, data.names)
    cached_path = _ready_model(cfg, model, data, device, world)
    embedder, emb, box_emb, box_index = _class_embeddings(model, data, device)
    record = _heldout_record(cfg, run, rank, model, embedder, data, device, cached_path, start_it, resume_from)
    skipped: set[str] = set()
    sampler = MixedSampler(len(data.box), len(data.labels), cfg.box_batch, cfg.label_batch, parse_ratio(cfg.ratio),
                           cfg.seed, rank)
    optimizer, params, adapter, region_scorer = _optimizer(cfg, run, model, embedder, emb, data.names, record,
                                                           cached_path, device, resume_from)
    common = {"run": run, "model": model, "optimizer": optimizer, "names": data.names,
              "trained_boxes": bool(data.box), "heldout": record}
    if cached_path:
        step = _cached_step(cfg, run, rank, model, data, device, emb, adapter, region_scorer, sampler, start_it,
                            skipped, common)
    else:
        step = _detic_step(cfg, model, data, device, emb, box_emb, box_index, sampler, world, skipped, common)
    loop = Loop(cfg, run, optimizer, params, device, rank, world, "train", t_start, on_progress)
    state, it = loop.run_steps(step, start_it)

    result = {"state": state, "iteration": it, "total": cfg.iters, "vocabulary": data.names,
              "skipped_images": sorted(skipped), "seconds": time.time() - t_start, "last": loop.last,
              "cached_features": cached_path}
    if world > 1:
        checks = [None] * world
        dist.all_gather_object(checks, [float(p.detach().double().sum()) for p in params])
        result["rank_checksums"] = checks
    if rank == 0:
        _finish(cfg, run, model, embedder, step, record, skipped, state, it, result)
    if world > 1:
        dist.barrier()
    return result


def _read_data(cfg: RunConfig) -> _Data:
    """The box and tag datasets, the held-out share of the tags (by file name: a resumed run holds
    out the same images) and the vocabulary."""
    box, labels = [], []
    if cfg.box_data:
        box, _ = read_box_dataset(cfg.box_data, cfg.box_images)
    if cfg.label_data:
        labels, _ = read_label_dataset(cfg.label_data, cfg.label_images)
    if not box and not labels:
        raise DataError("no training images: give --box-data and/or --label-data with existing images")
    names = vocabulary_of(box, labels)
    names_index = {n.casefold(): i for i, n in enumerate(names)}
    heldout, heldout_note = [], ""
    if labels and cfg.heldout_share > 0:  # by file name: a resumed run holds out the same images
        labels, heldout, heldout_note = split_heldout(labels, cfg.heldout_share)
        log.info("%s", heldout_note)
    return _Data(box, labels, heldout, heldout_note, names, names_index)


def _start_model(cfg: RunConfig, run: RunDir, resume: bool, rank: int, names: list[str]) -> tuple:
    """(model, first iteration, checkpoint resumed from or None): the run's latest checkpoint when
    resuming, else `cfg.model` with the heads and backbone training it asks for."""
    start_it, opt_state = 0, None
    resume_from = run.latest_checkpoint() if resume else None
    if resume and resume_from is None:
        log.warning("--resume: no checkpoint in %s yet, starting from %s", run.path, cfg.model)
    if resume_from is not None:
        model, opt_state = run.load_checkpoint(resume_from)
        start_it = int(opt_state["iteration"])
        if opt_state.get("vocabulary") != names:
            raise DataError("the data's vocabulary differs from the run being resumed; use a new --out")
        log.info("resuming from %s at iteration %d", resume_from, start_it)
    else:
        if rank == 0:
            run.write_status("running", message="loading the model")
        model = load_detector(cfg.model)
        if cfg.heads or cfg.train_backbone:  # Vasconcelos' choices (detector.capacity)
            model, report = rebuild(model, cfg.heads or None, cfg.train_backbone or None, seed=cfg.seed)
            log.info("heads %s, backbone %s: %s", cfg.heads or "kept", cfg.train_backbone or "kept", report.describe())
    if resume and rank == 0:  # the curve keeps only what this continuation builds on (none: from the start)
        run.truncate_metrics(start_it)
    return model, start_it, resume_from


def _ready_model(cfg: RunConfig, model, data: _Data, device: torch.device, world: int) -> bool:
    """The model on its device in training mode, its backbone frozen when the tags' features are
    cached; returns whether they are (tags only, frozen backbone: `tag_features.can_cache`)."""
    box, labels = data.box, data.labels
    if box:  # box batches train the RPN: from now on the model proposes with it (not selective search)
        model.config.rpn_trained = True
    model.to(device).train()
    cached_path = cfg.tag_features == "cached" and bool(labels) and can_cache(model, bool(box), world)
    if cfg.tag_features == "cached" and labels and not cached_path:  # said: the run takes far longer
        log.info("tag features are not cached (%s): every step runs the whole model (Detic's full path)",
                 "box labels train the backbone's consumers too" if box else
                 f"{world} processes" if world > 1 else "the backbone is trained")
    if cached_path:  # the neck's features are cached: only the box head and the classifier learn
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        log.info("image labels only: the RPN and box regression get no signal; with a frozen backbone the "
                 "backbone, neck and proposals run once per image (cached) and the %s learn",
                 "classifier" if cfg.image_label_scope == "classifier" else "box head and classifier")
    elif not box:
        log.info("image labels only: the RPN and box regression get no signal; only the %s learns",
                 "classifier" if cfg.image_label_scope == "classifier" else "classifier, box head and neck")
    return cached_path


def _class_embeddings(model, data: _Data, device: torch.device) -> tuple:
    """(embedder, every name's embedding, the box classes' embeddings, name -> box class index)."""
    box, labels, names, names_index = data.box, data.labels, data.names, data.names_index
    embedder = VocabularyEmbedder.for_config(model.config)
    _, emb = embedder(names)
    emb = emb.to(device)
    # Box batches classify over the classes that have box annotations only (Detic: per-dataset
    # classifiers / zero federated frequency). Otherwise every unannotated object of an
    # image-label-only class in a box image (LVIS-base style) would teach "this is not that class".
    counts = torch.zeros(len(names))
    for s in box:
        for n in {n.casefold() for n in s.names}:
            counts[names_index[n]] += 1
    box_ids = [i for i in range(len(names)) if counts[i] > 0]
    box_emb = emb[box_ids]
    box_index = {names[i].casefold(): j for j, i in enumerate(box_ids)}
    model.roi_heads.class_freq = counts[box_ids].pow(0.5)
    if box and labels:
        log.info("vocabulary: %d classes, %d with boxes (box batches classify over those only)",
                 len(names), len(box_ids))
    return embedder, emb, box_emb, box_index


def _heldout_record(cfg: RunConfig, run: RunDir, rank: int, model, embedder, data: _Data, device, cached_path: bool,
                    start_it: int, resume_from) -> HeldoutRecord | None:
    """Rank 0: the held-out scorer with the starting model's scores (and, with validation data,
    its evaluation); None without held-out images."""
    heldout, heldout_note, labels, names = data.heldout, data.heldout_note, data.labels, data.names
    record = None
    if rank == 0 and heldout:
        def heldout_progress(done, total):
            run.write_status("running", iteration=start_it, total=cfg.iters,
                             message=f"reading held-out images: {done} of {total}")

        scorer = HeldoutScorer(heldout, names, device, frozen_neck=cached_path)
        scorer.prepare(model, heldout_progress)
        record = HeldoutRecord(scorer, heldout_note, list(model.config.trained_class_names),
                               run.heldout() if resume_from is not None else None)
        if record.record.get("before") is None:
            run.write_status("running", message="scoring the starting model on the held-out images")
            record.score_before(model, run)
    elif rank == 0 and labels and resume_from is None:
        run.write_heldout({"note": heldout_note or "no held-out images", "images": 0, "before": None,
                           "checkpoints": [], "best": None})
    if rank == 0 and cfg.eval_data and resume_from is None:  # the "before" of the run's diagnostic
        from .evaluate import evaluate_model

        run.write_status("running", iteration=0, total=cfg.iters, message="evaluating the starting model")
        run.write_evaluation(evaluate_model(model.eval(), cfg.eval_data, cfg.eval_images, cfg.novel,
                                            embedder=embedder), before=True)
        model.train()
    return record


def _optimizer(cfg: RunConfig, run: RunDir, model, embedder, emb, names: list[str], record, cached_path: bool,
               device, resume_from) -> tuple:
    """(AdamW over what trains, those parameters, the name mapping's (logits, rows) or None, the
    region scorer or None). With cached features and an ImageNet region scorer the tags also
    teach it what each name means (`detector.name_adapters`), at a larger step."""
    region_scorer, adapter = None, None
    if cached_path and model.config.region_scoring and model.config.region_scorer == "imagenet":
        # the tags also teach the ImageNet region scorer what each name means (detector.name_adapters)
        region_scorer = record.scorer.predictor.region_scorer if record is not None else None
        if region_scorer is None:
            from detector.region_scorer import build_region_scorer

            region_scorer = build_region_scorer(model.config, embedder.encoder, device)
        rows = model.name_adapters.extend(emb)
        adapter = (region_scorer.match_logits(emb, names).detach(), rows)
    adapter_params = [model.name_adapters.deltas] if adapter is not None else []
    params = [p for p in model.parameters() if p.requires_grad and all(p is not a for a in adapter_params)]
    if cached_path and cfg.image_label_scope == "classifier":
        params = list(model.roi_heads.box_predictor.cls_score.parameters())
    groups = [{"params": params}]
    if adapter_params:  # logits move by units, not by 1e-4s: a larger step, no weight decay
        groups.append({"params": adapter_params, "lr_scale": ADAPTER_LR / cfg.lr, "weight_decay": 0.0})
    optimizer = adamw(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    params = params + adapter_params
    if resume_from is not None:
        run.restore_optimizer(resume_from, optimizer)
    return optimizer, params, adapter, region_scorer


def _cached_step(cfg: RunConfig, run: RunDir, rank: int, model, data: _Data, device, emb, adapter, region_scorer,
                 sampler, start_it: int, skipped: set[str], common: dict) -> _CachedTagStep:
    """Steps on cached candidates: every tagged image read once through the frozen model first."""
    labels, names_index = data.labels, data.names_index

    def cache_progress(done, total):
        if rank == 0:
            run.write_status("running", iteration=start_it, total=cfg.iters,
                             message=f"reading and caching tagged images: {done} of {total}")

    cached_list, unreadable = cache_tag_images(model, labels, names_index, cfg.label_size, device,
                                               run.cache_dir("tag_proposals"), cache_progress, region_scorer)
    skipped.update(unreadable)
    by_path = {item.path: item for item in cached_list}
    cached = {i: by_path[str(s.path)] for i, s in enumerate(labels) if str(s.path) in by_path}
    if not cached:
        raise DataError("none of the tagged images could be read")
    return _CachedTagStep(cached, sampler, cfg, device, emb, adapter=adapter, **common)


def _detic_step(cfg: RunConfig, model, data: _Data, device, emb, box_emb, box_index, sampler, world: int,
                skipped: set[str], common: dict) -> _DeticStep:
    """Detic's full path (box and tag batches through the whole model), under DDP when `world` > 1."""
    train_step = TrainStep(model, {"rule": cfg.image_label_rule, "weight": cfg.image_label_weight,
                                   "scope": cfg.image_label_scope})
    if world > 1:
        train_step = nn.parallel.DistributedDataParallel(
            train_step, find_unused_parameters=True, device_ids=[device.index] if device.type == "cuda" else None)
    return _DeticStep(train_step, sampler, data.box, data.labels, cfg, data.names_index, box_index, device, emb,
                      box_emb, world, skipped, **common)


def _finish(cfg: RunConfig, run: RunDir, model, embedder, step, record, skipped: set[str], state: str, it: int,
            result: dict) -> None:
    """Rank 0, after the loop: the last checkpoint and its held-out score, the evaluation (with
    validation data), the summary and the final status line (with the images skipped)."""
    step.save(it)
    step.evaluate(it)
    if record is not None:
        result["heldout"] = heldout_summary(record.record)
    if state == "finished" and cfg.eval_data:
        from .evaluate import evaluate_model

        result["evaluation"] = evaluate_model(model.eval(), cfg.eval_data, cfg.eval_images, cfg.novel,
                                              embedder=embedder)
        run.write_evaluation(result["evaluation"])
    run.write_summary(result)
    run.clear_cancel()
    unreadable = sorted(skipped | set(record.scorer.skipped if record is not None else []))
    message = "done" if state == "finished" else "stopped; Resume continues it (--resume on the command line)"
    if unreadable:
        message += (f"; {len(unreadable)} unreadable image(s) skipped: "
                    + ", ".join(Path(p).name for p in unreadable[:5]) + (" …" if len(unreadable) > 5 else ""))
    run.write_status(state, iteration=it, total=cfg.iters, message=message)


def _save(run: RunDir, model, optimizer, it, names, trained_names, trained_boxes: bool = False) -> None:
    if trained_boxes and it > 0:  # box batches train the RPN and the box regression
        model.config.rpn_trained = True
    known = set(model.config.trained_class_names)
    model.config.trained_class_names = list(model.config.trained_class_names) + [
        n for n in names if n.casefold() in trained_names and n not in known
    ]
    run.save_checkpoint(model, optimizer, it, {"vocabulary": names})
