"""AlignDet box-domain pre-training (ICCV 2023) of everything but the frozen backbone, on unlabelled images.

`pretrain(PretrainConfig(images=DIR, ...), run_dir)` is what `python -m train pretrain` (and so the
app's background job) runs; every file of the run folder goes through `RunDir`, exactly as for
`finetune`. Per iteration and image:

1. pseudo boxes: selective-search proposals filtered as in AlignDet (`detector.proposals`),
   computed once per image in worker processes and cached by content hash (`cached_proposals`);
   each kept proposal is a pseudo object with its own instance id;
2. two views (`two_views`): independent scale jitter + horizontal flip + one photometric op, the
   boxes transformed with the pixels;
3. the online detector sees view 1: the RPN learns the pseudo boxes as class-agnostic objects
   (its standard losses), RoIs are matched to them at IoU >= 0.5 (torchvision's sampler), matched
   RoIs regress to them (L1 on the box deltas) and are embedded by an fc-ReLU-fc projector (256-d)
   that stands where the classifier will be;
4. a momentum (EMA) copy of the neck, box head and projector embeds the pseudo boxes of both
   views without gradients; momentum 0.996 rising to 1 on a cosine schedule (`momentum_at`);
5. box-level InfoNCE (`info_nce`, temperature 0.5): each online RoI embedding against the
   momentum embedding of the same pseudo box in view 2 (positive) and of every other pseudo box
   of the batch in both views (negatives).

The backbone's body never trains (DESIGN.md: Vasconcelos). The run folder is a detector
checkpoint (`config.rpn_trained` set, `config.pretrained_heads` says how); it carries the projector
under `aligndet_projector.*` so a run resumes exactly, and `detector.checkpoint.load_checkpoint`
drops exactly those tensors when `finetune` or the app starts from it. The momentum copy is saved
beside each checkpoint (`momentum.safetensors`).
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import math
import multiprocessing
import os
import random
import sys
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from detector.checkpoint import read_checkpoint
from detector.files import atomic_write
from detector.images import IMAGE_SUFFIXES, ImageLoadError, list_image_files, load_image
from detector.predictor import autocast_for
from detector.presets import load_detector
from detector.proposals import ALIGNDET, ProposalParams, selective_search

from .data import DataError
from .finetune import run_with_status
from .loop import Loop, adamw, device_for
from .run_config import PretrainConfig
from .run_dir import RunDir

log = logging.getLogger("train")

PROJECTOR = "aligndet_projector"  # the detector attribute; see detector.checkpoint.PRETRAINING_ONLY
PHOTOMETRIC_OPS = ("autocontrast", "equalize", "solarize", "colour_jitter")


# --- 1. proposals, cached by image content -------------------------------------------------------
def list_images(*folders: str | Path | None) -> list[Path]:
    """The image files under every given folder; DataError when a folder is missing or all are empty."""
    paths: list[Path] = []
    for folder in filter(None, folders):
        if not Path(folder).is_dir():
            raise DataError(f"image folder '{folder}' does not exist")
        paths += list_image_files(folder)
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {' or '.join(repr(str(f)) for f in folders if f)}")
    return sorted(set(paths))


def image_proposals(path: str | Path, params: ProposalParams = ALIGNDET) -> np.ndarray:
    """AlignDet's filtered selective-search boxes [K, 4] (xyxy, float32) in the image's original pixels."""
    img = load_image(path)
    return (selective_search(img.array, params).numpy() * img.scale).astype(np.float32)


def _cache_key(data: bytes, params: ProposalParams) -> str:
    return hashlib.sha256(data + repr(params).encode()).hexdigest()[:40]


def _worker(job: tuple[str, str, ProposalParams]) -> tuple[str, str | None]:
    """Compute one image's proposals into the cache file; (path, error or None)."""
    path, target, params = job
    try:
        import cv2

        cv2.setNumThreads(1)
        torch.set_num_threads(1)
        boxes = image_proposals(path, params)
    except (ImageLoadError, OSError, ValueError) as e:
        return path, str(e)
    buf = io.BytesIO()
    np.save(buf, boxes)
    atomic_write(target, buf.getvalue())
    return path, None


def cached_proposals(paths: list[Path], cache_dir: Path, params: ProposalParams = ALIGNDET, workers: int = 1,
                     on_progress=None) -> tuple[dict[Path, np.ndarray], list[str]]:
    """({path: proposals} for every readable image, unreadable paths). Images whose content was
    seen before (same bytes, same parameters) are read from `cache_dir`; the others are computed
    in `workers` processes. `on_progress(done, total)` after each image."""
    jobs, targets = [], {}
    for p in paths:
        try:
            key = _cache_key(p.read_bytes(), params)
        except OSError:
            continue
        targets[p] = cache_dir / f"{key}.npy"
        if not targets[p].exists():
            jobs.append((str(p), str(targets[p]), params))
    done, total, failed = len(paths) - len(jobs), len(paths), [str(p) for p in paths if p not in targets]
    if on_progress:
        on_progress(done, total)
    from tqdm import tqdm

    bar = tqdm(total=total, initial=done, desc="proposals", disable=not sys.stderr.isatty())
    if workers > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")  # no forked torch / OpenMP state
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
            results = pool.map(_worker, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
            for _, error in results:
                done += 1
                failed += [error] if error else []
                bar.update(1)
                if on_progress:
                    on_progress(done, total)
    else:
        for job in jobs:
            _, error = _worker(job)
            done += 1
            failed += [error] if error else []
            bar.update(1)
            if on_progress:
                on_progress(done, total)
    bar.close()
    out = {p: np.load(t) for p, t in targets.items() if t.exists()}
    return out, failed


# --- 2. two views ------------------------------------------------------------------------------
def geometric_view(image: torch.Tensor, boxes: torch.Tensor, size: int, jitter: tuple[float, float],
                   rng: random.Random, flip: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize `image` [3, H, W] so its shorter side is size x U(jitter) (longer side <= 1.667 x size),
    flip it horizontally with probability 1/2 (or as `flip` says); `boxes` [K, 4] follow the pixels."""
    h, w = image.shape[-2:]
    scale = min(size * rng.uniform(*jitter) / min(h, w), size * 1.667 / max(h, w))
    nh, nw = max(8, round(h * scale)), max(8, round(w * scale))
    out = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    b = boxes.float().reshape(-1, 4) * torch.tensor([nw / w, nh / h, nw / w, nh / h])
    flipped = rng.random() < 0.5 if flip is None else flip
    if flipped:
        out = out.flip(-1)
        b = torch.stack([nw - b[:, 2], b[:, 1], nw - b[:, 0], b[:, 3]], dim=1)
    return out, b


def photometric(image: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """One of autocontrast / equalize / solarize / colour jitter (AlignDet's photometric family)."""
    from torchvision.transforms.v2 import functional as TF

    op = rng.choice(PHOTOMETRIC_OPS)
    u8 = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    if op == "autocontrast":
        u8 = TF.autocontrast(u8)
    elif op == "equalize":
        u8 = TF.equalize(u8)
    elif op == "solarize":
        u8 = TF.solarize(u8, threshold=128)
    else:
        u8 = TF.adjust_brightness(u8, rng.uniform(0.6, 1.4))
        u8 = TF.adjust_contrast(u8, rng.uniform(0.6, 1.4))
        u8 = TF.adjust_saturation(u8, rng.uniform(0.6, 1.4))
    return u8.float().div_(255)


def two_views(image: torch.Tensor, boxes: torch.Tensor, size: int, jitter: tuple[float, float],
              rng: random.Random) -> list[tuple[torch.Tensor, torch.Tensor]]:
    views = []
    for _ in range(2):
        img, b = geometric_view(image, boxes, size, jitter, rng)
        views.append((photometric(img, rng), b))
    return views


# --- 3.-5. model pieces and losses ---------------------------------------------------------------
class Projector(nn.Sequential):
    """AlignDet's fc-ReLU-fc projection of RoI features (replaces the classifier while pre-training)."""

    def __init__(self, in_features: int, dim: int = 256):
        super().__init__(nn.Linear(in_features, in_features), nn.ReLU(inplace=True), nn.Linear(in_features, dim))


def momentum_at(start: float, it: int, total: int) -> float:
    """EMA momentum at iteration `it` of `total`: `start` rising to 1 on a half cosine (BYOL/AlignDet)."""
    return 1.0 - (1.0 - start) * (math.cos(math.pi * min(it, total) / max(1, total)) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * source for parameters; buffers are copied."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1.0 - momentum)
    for t, s in zip(target.buffers(), source.buffers(), strict=True):
        t.copy_(s)


def info_nce(queries: torch.Tensor, query_ids: torch.Tensor, keys: torch.Tensor, key_ids: torch.Tensor,
             key_is_positive: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Box-level InfoNCE. Query i's positives are the keys with its id and `key_is_positive`; its
    negatives are the keys of every other id; keys of its own id that are not positives (the
    same object in the query's own view) take no part. Embeddings are L2-normalised;
    loss_i = -mean over positives p of log(exp(q.p/t) / sum over positives and negatives exp(q.k/t)),
    averaged over the queries that have a positive (0 with a gradient path when none has)."""
    if len(queries) == 0 or len(keys) == 0:
        return queries.sum() * 0.0
    q = F.normalize(queries.float(), dim=1)
    k = F.normalize(keys.float(), dim=1)
    logits = q @ k.t() / temperature
    same = query_ids[:, None] == key_ids[None, :]
    pos = same & key_is_positive[None, :]
    logits = logits.masked_fill(same & ~pos, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    has_pos = pos.any(dim=1)
    if not has_pos.any():
        return queries.sum() * 0.0
    per_query = -log_prob.masked_fill(~pos, 0.0).sum(dim=1) / pos.sum(dim=1).clamp(min=1)
    return per_query[has_pos].mean()


def online_parts(detector: nn.Module) -> nn.ModuleDict:
    """The modules the momentum copy mirrors (references into `detector`, in a fixed order)."""
    return nn.ModuleDict({"fpn": detector.backbone.fpn, "box_roi_pool": detector.roi_heads.box_roi_pool,
                          "box_head": detector.roi_heads.box_head, "projector": getattr(detector, PROJECTOR)})


def body_features(detector: nn.Module, tensors: torch.Tensor) -> OrderedDict:
    """The frozen backbone body's feature maps (computed once, shared by online and momentum necks)."""
    with torch.no_grad():
        feats = detector.backbone.body(tensors)
    if isinstance(feats, dict):
        feats = list(feats.values())
    return OrderedDict((str(i), f) for i, f in enumerate(feats))


@torch.no_grad()
def embed_boxes(parts: nn.ModuleDict, body: OrderedDict, boxes: list[torch.Tensor], image_sizes) -> torch.Tensor:
    features = parts["fpn"](body)
    x = parts["box_head"](parts["box_roi_pool"](features, boxes, image_sizes))
    return parts["projector"](x.flatten(1))


class AlignDetStep(nn.Module):
    """The online detector's losses for one batch (one module, so DDP can wrap it)."""

    def __init__(self, detector: nn.Module, temperature: float, contrastive_weight: float,
                 regression_weight: float):
        super().__init__()
        self.detector = detector
        self.temperature, self.wc, self.wr = temperature, contrastive_weight, regression_weight

    def forward(self, image_list, body, targets, keys, key_ids, key_is_positive) -> dict[str, torch.Tensor]:
        det = self.detector
        features = det.backbone.fpn(body)
        proposals, _, rpn_losses = det.rpn(image_list, features, targets)
        rh = det.roi_heads
        rois, _, labels, reg_targets = rh.select_training_samples(proposals, targets)
        x = rh.box_features(features, rois, image_list.image_sizes).flatten(1)
        deltas = rh.box_predictor.bbox_pred(x)
        # pseudo-box ids: targets' labels are per-image id + 1; make them unique in the batch
        offsets = [t["id_offset"] for t in targets]
        ids = torch.cat([lb - 1 + off for lb, off in zip(labels, offsets)])
        labels = torch.cat(labels)
        pos = labels > 0
        loss_reg = F.l1_loss(deltas[pos].float(), torch.cat(reg_targets)[pos].float(), reduction="sum")
        queries = getattr(det, PROJECTOR)(x[pos])
        loss_con = info_nce(queries, ids[pos], keys, key_ids, key_is_positive, self.temperature)
        return {**rpn_losses, "loss_box_reg": self.wr * loss_reg / max(labels.numel(), 1),
                "loss_contrastive": self.wc * loss_con}


# --- the run ---------------------------------------------------------------------------------
def pretrain(cfg: PretrainConfig, run_dir: str | Path | RunDir, resume: bool = False, on_progress=None) -> dict:
    """Run (or, with `resume`, continue) AlignDet pre-training into `run_dir`; returns the summary."""
    return run_with_status(run_dir, lambda run, rank, world: _pretrain(cfg, run, resume, rank, world, on_progress))


def _image_order(n: int, seed: int, position: int) -> int:
    """Index of the image at global sample `position`: a fresh permutation every epoch."""
    epoch, offset = divmod(position, n)
    order = list(range(n))
    random.Random(f"pretrain-order/{seed}/{epoch}").shuffle(order)
    return order[offset]


def _build(cfg: PretrainConfig, source, state: dict | None = None):
    """(detector with its projector, momentum copy). `state`: a checkpoint's full state dict."""
    from detector.model import OpenVocabDetector

    if state is None:
        detector = load_detector(source)
    else:
        config = source
        detector = OpenVocabDetector(config.replace(backbone_weights="none"))
        detector.config = config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        setattr(detector, PROJECTOR, Projector(detector.config.representation_size, cfg.projector_dim))
    if state is not None:
        detector.load_state_dict(state, strict=True)
    momentum = copy.deepcopy(online_parts(detector))
    momentum.requires_grad_(False)
    return detector, momentum


def _batch(idx, paths, proposals, cfg, rng, device):
    views = ([], []), ([], [])  # (images, targets) for view 1 and view 2
    offset = 0
    for i in idx:
        img = load_image(paths[i])
        image = torch.from_numpy(img.array).permute(2, 0, 1).float().div_(255)
        boxes = torch.from_numpy(proposals[paths[i]]).reshape(-1, 4) / img.scale
        for (images, targets), (v, b) in zip(views, two_views(image, boxes, cfg.size, cfg.jitter, rng)):
            images.append(v.to(device))
            targets.append({"boxes": b.to(device), "labels": torch.arange(1, len(b) + 1, device=device),
                            "id_offset": offset})
        offset += len(boxes)
    return views


def _pretrain(cfg: PretrainConfig, run: RunDir, resume: bool, rank: int, world: int, on_progress) -> dict:
    """One run, in named steps: the images and their proposals, the detector and its momentum
    copy (new or resumed), the optimizer, the shared loop (`train.loop.Loop`) and what the run
    leaves in its folder."""
    t_start = time.time()
    cfg.validate()
    if rank == 0:
        run.write_config(cfg)
        run.write_status("running", iteration=0, total=cfg.iters, message="finding images", started=t_start,
                         pid=os.getpid())
    paths, proposals, failed, n_boxes, proposal_seconds = _images_and_proposals(cfg, run, rank, world)
    device = device_for(cfg, world)
    detector, momentum, start_it, resume_from = _start_models(cfg, run, resume)
    detector.to(device).train()
    momentum.to(device).train()
    detector.backbone.body.eval()  # never trained here, whatever the model's freeze setting
    online = online_parts(detector)
    params = [p for n, p in detector.named_parameters()
              if p.requires_grad and not n.startswith("backbone.body.")
              and not n.startswith("roi_heads.box_predictor.cls_score.")]
    optimizer = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if resume_from is not None:
        run.restore_optimizer(resume_from, optimizer)
    step = AlignDetStep(detector, cfg.temperature, cfg.contrastive_weight, cfg.regression_weight)
    if world > 1:
        step = nn.parallel.DistributedDataParallel(step, find_unused_parameters=True,
                                                   device_ids=[device.index] if device.type == "cuda" else None)
    pretrain_step = _PretrainStep(step, detector, momentum, online, optimizer, run, cfg, idx_paths=paths,
                                  proposals=proposals, device=device, rank=rank, world=world)
    loop = Loop(cfg, run, optimizer, params, device, rank, world, "pretrain", t_start, on_progress)
    state, it = loop.run_steps(pretrain_step, start_it)
    last = loop.last

    result = {"state": state, "iteration": it, "total": cfg.iters, "images": len(paths),
              "skipped_images": sorted(failed), "proposals_per_image": sum(n_boxes) / len(paths),
              "proposal_seconds": proposal_seconds, "seconds": time.time() - t_start, "last": last}
    if world > 1:
        checks = [None] * world
        dist.all_gather_object(checks, [float(p.detach().double().sum()) for p in params])
        result["rank_checksums"] = checks
    if rank == 0:
        _save(run, detector, momentum, optimizer, it, len(paths))
        run.write_summary(result)
        run.clear_cancel()
        run.write_status(state, iteration=it, total=cfg.iters,
                         message="done" if state == "finished" else "stopped; resume with --resume")
    if world > 1:
        dist.barrier()
    return result


def _images_and_proposals(cfg: PretrainConfig, run: RunDir, rank: int, world: int) -> tuple:
    """(readable images, their selective-search proposals, unreadable ones, proposals per image,
    seconds it took): rank 0 fills the run's proposal cache (in parallel), the other ranks read it."""
    paths = list_images(cfg.images, cfg.extra_images)
    params = ProposalParams(top_k=cfg.proposals)
    workers = cfg.workers or min(8, os.cpu_count() or 1)

    def proposal_progress(done, total):
        if rank == 0:
            run.write_status("running", iteration=0, total=cfg.iters, message=f"proposals {done}/{total} images")

    t_prop = time.time()
    if rank == 0:
        proposals, failed = cached_proposals(paths, run.cache_dir("proposals"), params, workers, proposal_progress)
    if world > 1:
        dist.barrier()  # rank 0 filled the cache; the others read it
    if rank != 0:
        proposals, failed = cached_proposals(paths, run.cache_dir("proposals"), params, 1)
    proposal_seconds = time.time() - t_prop
    paths = [p for p in paths if p in proposals]
    if not paths:
        raise DataError("none of the images could be read")
    for f in failed:
        log.warning("skipping unreadable image: %s", f)
    n_boxes = [len(proposals[p]) for p in paths]
    log.info("%d images, %.1f proposals per image (%.0f s)", len(paths), sum(n_boxes) / len(paths), proposal_seconds)
    return paths, proposals, failed, n_boxes, proposal_seconds


def _start_models(cfg: PretrainConfig, run: RunDir, resume: bool) -> tuple:
    """(detector, momentum copy, first iteration, checkpoint resumed from or None): the run's
    latest checkpoint when resuming, else `cfg.model` with a fresh momentum copy."""
    start_it, trainer_state = 0, None
    resume_from = run.latest_checkpoint() if resume else None
    if resume and resume_from is None:
        log.warning("--resume: no checkpoint in %s yet, starting from %s", run.path, cfg.model)
    if resume_from is not None:
        config, state = read_checkpoint(resume_from)
        detector, momentum = _build(cfg, config, state)
        momentum.load_state_dict(run.load_tensors(resume_from, "momentum"))
        trainer_state = run.trainer_state(resume_from)
        start_it = int(trainer_state["iteration"])
        log.info("resuming from %s at iteration %d", resume_from, start_it)
    else:
        detector, momentum = _build(cfg, cfg.model)
    if resume:  # the curve keeps only what this continuation builds on (none: from the start)
        run.truncate_metrics(start_it)
    return detector, momentum, start_it, resume_from


class _PretrainStep:
    """AlignDet's step for the shared loop (`train.loop`): two views, the momentum encoder's keys,
    the online detector's box-level contrastive and regression losses; EMA after each update."""

    kind = "pretrain"

    def __init__(self, step, detector, momentum, online, optimizer, run, cfg, idx_paths, proposals, device,
                 rank, world):
        self.step, self.detector, self.momentum, self.online = step, detector, momentum, online
        self.optimizer, self.run, self.cfg = optimizer, run, cfg
        self.paths, self.proposals, self.device, self.rank, self.world = idx_paths, proposals, device, rank, world
        self.images_per_step = cfg.batch

    def losses(self, it, rng):
        cfg, detector, momentum = self.cfg, self.detector, self.momentum
        first = (it * self.world + self.rank) * cfg.batch
        idx = [_image_order(len(self.paths), cfg.seed, first + j) for j in range(cfg.batch)]
        (images1, targets1), (images2, targets2) = _batch(idx, self.paths, self.proposals, cfg, rng, self.device)
        with autocast_for(self.device):
            list1, targets1 = detector.transform(images1, targets1)
            list2, targets2 = detector.transform(images2, targets2)
            body1, body2 = body_features(detector, list1.tensors), body_features(detector, list2.tensors)
            k2 = embed_boxes(momentum, body2, [t["boxes"] for t in targets2], list2.image_sizes)
            k1 = embed_boxes(momentum, body1, [t["boxes"] for t in targets1], list1.image_sizes)
            ids = torch.cat([t["labels"] - 1 + t["id_offset"] for t in targets2])
            keys = torch.cat([k2, k1]).float()
            key_ids = torch.cat([ids, ids])
            key_is_positive = torch.cat([torch.ones_like(ids, dtype=torch.bool), torch.zeros_like(ids, dtype=torch.bool)])
            return self.step(list1, body1, targets1, keys, key_ids, key_is_positive), {}

    def after_update(self, it: int) -> dict[str, float]:
        m = momentum_at(self.cfg.momentum, it + 1, self.cfg.iters)
        ema_update(self.momentum, self.online, m)
        return {"momentum": m}

    def save(self, it: int) -> None:
        _save(self.run, self.detector, self.momentum, self.optimizer, it, len(self.paths))

    def evaluate(self, it: int) -> None:  # nothing labelled to score: pre-training has no held-out tags
        return None


def _save(run: RunDir, detector, momentum, optimizer, it: int, n_images: int) -> None:
    if it > 0:  # the RPN and box regression have now learnt from boxes (pseudo ones)
        detector.config.rpn_trained = True
        detector.config.pretrained_heads = f"aligndet: {n_images} unlabelled images, {it} iterations"
    run.save_checkpoint(detector, optimizer, it, {"kind": "pretrain"}, states={"momentum": momentum.state_dict()})
