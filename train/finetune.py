"""Detic fine-tuning from box labels and image-level labels: the engine behind in-app retraining.

`finetune(RunConfig(...), run_dir)` is what the CLI (and so the app's background job) and the
experiments call; every file it reads or writes in the run folder goes through `RunDir`. It mixes box batches (standard detection losses) and image-label batches (Detic's
image-label loss, lambda = 0.1) at a fixed ratio, trains with AdamW + warm-up + cosine and
gradient clipping, logs JSONL metrics, checkpoints atomically, resumes exactly, stops cleanly on
SIGINT/SIGTERM or a `CANCEL` file, and runs under `torchrun` with DDP.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import sys
import threading
import time
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
from .run_config import RunConfig
from .run_dir import RunDir
from .sampler import MixedSampler, parse_ratio

log = logging.getLogger("train")


def learning_rate(cfg: RunConfig, it: int) -> float:
    warmup = cfg.warmup_iters
    if it < warmup:
        return cfg.lr * (it + 1) / warmup
    progress = (it - warmup) / max(1, cfg.iters - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


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


class StopFlag:
    """Set by SIGINT/SIGTERM or by a cancel request in the run directory."""

    def __init__(self, run: RunDir):
        self.run = run
        self.signalled = False
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    def __bool__(self) -> bool:
        return self.signalled or self.run.cancel_requested()


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
    file, and a "failed" status with the reason when `body(run, rank, world)` raises."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    rank, world = _distributed()
    handler = _setup_logging(run, rank)
    try:
        return body(run, rank, world)
    except BaseException as e:
        if rank == 0:
            run.write_status("failed", message=f"{type(e).__name__}: {e}"[:500], pid=os.getpid())
        raise
    finally:
        if handler is not None:
            for name in ("train", "detector"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()


def finetune(cfg: RunConfig, run_dir: str | Path | RunDir, resume: bool = False, on_progress=None) -> dict:
    """Run (or, with `resume`, continue) training into `run_dir`; returns the final metrics dict.

    The config is (re)written into the run folder, so a run records what it last ran with."""
    return run_with_status(run_dir, lambda run, rank, world: _finetune(cfg, run, resume, rank, world, on_progress))


def _finetune(cfg: RunConfig, run: RunDir, resume: bool, rank: int, world: int, on_progress) -> dict:
    t_start = time.time()
    cfg.validate()
    if rank == 0:
        run.write_config(cfg)
        run.write_status("running", iteration=0, total=cfg.iters, message="loading data", started=t_start,
                         pid=os.getpid())
    box, labels = [], []
    if cfg.box_data:
        box, _ = read_box_dataset(cfg.box_data, cfg.box_images)
    if cfg.label_data:
        labels, _ = read_label_dataset(cfg.label_data, cfg.label_images)
    if not box and not labels:
        raise DataError("no training images: give --box-data and/or --label-data with existing images")
    if not box:
        log.info("image labels only: the RPN and box regression get no signal; only the %s learns",
                 "classifier" if cfg.image_label_scope == "classifier" else "classifier, box head and neck")
    names = vocabulary_of(box, labels)
    names_index = {n.casefold(): i for i, n in enumerate(names)}

    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
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
        if rank == 0:
            run.truncate_metrics(start_it)
    else:
        model = load_detector(cfg.model)
        if cfg.heads or cfg.train_backbone:  # Vasconcelos' choices (detector.capacity)
            model, report = rebuild(model, cfg.heads or None, cfg.train_backbone or None, seed=cfg.seed)
            log.info("heads %s, backbone %s: %s", cfg.heads or "kept", cfg.train_backbone or "kept", report.describe())
    if box:  # box batches train the RPN: from now on the model proposes with it (not selective search)
        model.config.rpn_trained = True
    model.to(device).train()

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

    if rank == 0 and cfg.eval_data and resume_from is None:  # the "before" of the run's diagnostic
        from .evaluate import evaluate_model

        run.write_status("running", iteration=0, total=cfg.iters, message="evaluating the starting model")
        run.write_evaluation(evaluate_model(model.eval(), cfg.eval_data, cfg.eval_images, cfg.novel,
                                            embedder=embedder), before=True)
        model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if resume_from is not None:
        run.restore_optimizer(resume_from, optimizer)
    step = TrainStep(model, {"rule": cfg.image_label_rule, "weight": cfg.image_label_weight,
                             "scope": cfg.image_label_scope})
    if world > 1:
        step = nn.parallel.DistributedDataParallel(step, find_unused_parameters=True,
                                                   device_ids=[device.index] if device.type == "cuda" else None)
    sampler = MixedSampler(len(box), len(labels), cfg.box_batch, cfg.label_batch, parse_ratio(cfg.ratio),
                           cfg.seed, rank)
    stop = StopFlag(run)
    skipped: set[str] = set()
    window: dict[str, list[float]] = {}
    step_times: list[float] = []
    last: dict = {}
    trained_names = set()
    autocast = autocast_for(device)
    from tqdm import tqdm

    bar = tqdm(total=cfg.iters, initial=start_it, disable=rank != 0 or not sys.stderr.isatty(), desc="train")
    state = "finished"
    it = start_it
    while it < cfg.iters:
        if stop:
            state = "cancelled"
            break
        t0 = time.time()
        lr = learning_rate(cfg, it)
        for g in optimizer.param_groups:
            g["lr"] = lr
        torch.manual_seed(cfg.seed * 1_000_003 + it * world + rank)  # RoI/anchor sampling, per step
        kind, idx = sampler.batch(it)
        rng = random.Random(f"aug/{cfg.seed}/{it}/{rank}")
        samples = box if kind == "box" else labels
        images, payload = _batch(kind, idx, samples, cfg, rng, names_index, box_index, device, skipped)
        if world > 1:  # every rank must take part in the step, or none
            have = torch.tensor([len(images)], device=device)
            dist.all_reduce(have, op=dist.ReduceOp.MIN)
            empty = have.item() == 0
        else:
            empty = not images
        if not empty:
            for i in idx:
                trained_names.update(n.casefold() for n in (samples[i].names if kind == "box" else samples[i].positives))
            with autocast:
                losses = step(kind, images, payload, box_emb if kind == "box" else emb)
            loss = sum(losses.values())
            if torch.isfinite(loss):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.clip)
                optimizer.step()
                for k, v in losses.items():
                    window.setdefault(k, []).append(float(v.detach()))
                window.setdefault("loss", []).append(float(loss.detach()))
                for k, v in (model.image_label_stats if kind == "label" else {}).items():
                    window.setdefault(f"stats_{k}", []).append(v)
            else:
                log.warning("iteration %d: non-finite loss %s, step skipped", it, float(loss))
        it += 1
        step_times.append(time.time() - t0)
        bar.update(1)
        if rank == 0 and (it % cfg.log_interval == 0 or it == cfg.iters or it == start_it + 1):
            recent = step_times[-50:]
            sec = sum(recent) / len(recent)
            n_imgs = cfg.box_batch if kind == "box" else cfg.label_batch
            last = {"iteration": it, "lr": lr, "images_per_s": n_imgs * world / max(sec, 1e-9),
                    "peak_memory_mb": peak_memory_mb(device),
                    "eta_s": sec * (cfg.iters - it), "time": time.time() - t_start, "kind": kind,
                    **{k: sum(v) / len(v) for k, v in window.items() if v}}
            window = {}
            run.append_metrics(last)
            run.write_status("running", iteration=it, total=cfg.iters, message=f"loss {last.get('loss', 0):.4f}")
            if on_progress:
                on_progress(last)
        if rank == 0 and it % cfg.checkpoint_interval == 0 and it < cfg.iters:
            _save(run, model, optimizer, it, names, trained_names, bool(box))
    bar.close()

    result = {"state": state, "iteration": it, "total": cfg.iters, "vocabulary": names,
              "skipped_images": sorted(skipped), "seconds": time.time() - t_start, "last": last}
    if world > 1:
        checks = [None] * world
        dist.all_gather_object(checks, [float(p.detach().double().sum()) for p in params])
        result["rank_checksums"] = checks
    if rank == 0:
        _save(run, model, optimizer, it, names, trained_names, bool(box))
        if state == "finished" and cfg.eval_data:
            from .evaluate import evaluate_model

            result["evaluation"] = evaluate_model(model.eval(), cfg.eval_data, cfg.eval_images, cfg.novel,
                                                  embedder=embedder)
            run.write_evaluation(result["evaluation"])
        run.write_summary(result)
        run.clear_cancel()
        run.write_status(state, iteration=it, total=cfg.iters,
                         message="done" if state == "finished" else "stopped; Resume continues it (--resume on the command line)")
    if world > 1:
        dist.barrier()
    return result


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: `torch.cuda.max_memory_allocated` on CUDA, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _save(run: RunDir, model, optimizer, it, names, trained_names, trained_boxes: bool = False) -> None:
    if trained_boxes and it > 0:  # box batches train the RPN and the box regression
        model.config.rpn_trained = True
    known = set(model.config.trained_class_names)
    model.config.trained_class_names = list(model.config.trained_class_names) + [
        n for n in names if n.casefold() in trained_names and n not in known
    ]
    run.save_checkpoint(model, optimizer, it, {"vocabulary": names})
