"""What a training run will cost, measured before it exists: a few real optimiser steps.

`dry_run(cfg)` builds the model the run would train (its start model with the head preset and
backbone choice applied, `detector.capacity.rebuild`) on the run's device, and times full
training steps (forward, backward, AdamW) on synthetic images of the run's sizes and batches:
box batches when the run has box labels, image-label batches when it has tags (both when it
has both). Peak memory is `torch.cuda.max_memory_allocated` on CUDA and the process's peak RSS
on CPU, so it is meant to run in its own process: `python -m train dryrun --config RUN.json`
prints the result as JSON (what the app's Train tab shows).
"""

from __future__ import annotations

import time

import torch

from detector.capacity import backbone_choice_of, head_preset_of, rebuild
from detector.embedding_cache import VocabularyEmbedder
from detector.predictor import autocast_for, resolve_device
from detector.presets import load_detector

from .finetune import TrainStep
from .loop import adamw, peak_memory_mb
from .run_config import RunConfig
from .tag_features import REFRESH_VISITS, can_cache, encode_tag_image, tag_step

NAMES = [f"class {i}" for i in range(8)]  # stand-in vocabulary: the cost hardly depends on its size


def _batch(kind: str, cfg: RunConfig, gen: torch.Generator, device: torch.device):
    """Synthetic images of the run's size (4:3) with a few boxes / labels each."""
    size = cfg.box_size if kind == "box" else cfg.label_size
    n = cfg.box_batch if kind == "box" else cfg.label_batch
    images = [torch.rand(3, size, size * 4 // 3, generator=gen).to(device) for _ in range(n)]
    if kind == "box":
        payload = [{"boxes": torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.9]], device=device)
                    * torch.tensor([size * 4 // 3, size, size * 4 // 3, size], device=device),
                    "labels": torch.tensor([0, 1], device=device)} for _ in range(n)]
    else:
        payload = ([[i % len(NAMES)] for i in range(n)], [[] for _ in range(n)])
    return images, payload


def _scene(size: int, gen: torch.Generator) -> torch.Tensor:
    """A 4:3 image with a few flat rectangles on a gradient: selective search's cost on it is that
    of a photo, not of noise (which splits into thousands of regions)."""
    h, w = size, size * 4 // 3
    img = torch.linspace(0, 1, w).expand(3, h, w).clone() * torch.rand(3, 1, 1, generator=gen)
    for _ in range(4):
        x0, y0 = int(torch.randint(0, w // 2, (1,), generator=gen)), int(torch.randint(0, h // 2, (1,), generator=gen))
        x1, y1 = x0 + int(torch.randint(w // 8, w // 2, (1,), generator=gen)), y0 + int(torch.randint(h // 8, h // 2, (1,), generator=gen))
        img[:, y0:y1, x0:x1] = torch.rand(3, 1, 1, generator=gen)
    return img


def _measure_cached(model, cfg: RunConfig, emb: torch.Tensor, steps: int, gen: torch.Generator,
                    device: torch.device) -> tuple[float, float, float]:
    """(s per image to cache, s per tag step, s per held-out image to encode) of the cached path."""
    from detector.images import LoadedImage
    from detector.model import eval_mode
    from detector.predictor import Predictor

    n_images = cfg.label_batch + 1  # the first one is a warm-up (allocations, first calls), not timed
    predictor = Predictor(model, device=str(device))  # its region scorer is the one finetune trains
    scorer = predictor.region_scorer if model.config.region_scorer == "imagenet" else None
    adapter = None
    if scorer is not None:
        rows = model.name_adapters.extend(emb)
        adapter = (scorer.match_logits(emb).detach(), rows)
    model.train()
    items, t = [], time.perf_counter()
    with torch.no_grad(), eval_mode(model):
        model.transform.train()
        for i in range(n_images):
            if i == 1:
                t = time.perf_counter()
            full = _scene(model.config.min_size, gen).to(device)  # a photo as stored, resized as training does
            items.append(encode_tag_image(model, full, cfg.label_size, [0], [1], region_scorer=scorer))
        model.transform.train(False)
    cache_s = (time.perf_counter() - t) / (n_images - 1)
    batch = items[1:]  # distinct images, each visited once a step as in a run
    params = [p for p in model.roi_heads.parameters() if p.requires_grad] + [model.name_adapters.deltas]
    optimizer = adamw(params, lr=1e-6)
    times = []
    for i in range(max(steps, REFRESH_VISITS) + 1):  # whole refresh cycles: the mean is a run's mean
        t = time.perf_counter()
        with autocast_for(device):
            losses, _ = tag_step(model, batch, emb, device, cfg.image_label_rule, cfg.image_label_weight,
                                 cfg.image_label_scope, adapter)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t)
    photo = (_scene(model.config.min_size, gen).permute(1, 2, 0) * 255).byte().numpy()
    t = time.perf_counter()
    predictor.encode_keeping_pooled(LoadedImage(photo, photo.shape[:2]))
    heldout_s = time.perf_counter() - t
    model.train()
    return cache_s, sum(times) / max(len(times), 1), heldout_s


def dry_run(cfg: RunConfig, steps: int = 2) -> dict:
    """{"device", "heads", "backbone", "trainable_params", "seconds_per_iter": {kind: s},
    "peak_memory_mb", "steps"}: the mean of `steps` timed steps per batch kind after one warm-up
    (`steps=0`: no step at all, so the peak memory is the loaded model's).

    A tags-only run with cached features (what finetune does by default on a frozen backbone) is
    measured as it runs: "seconds_per_image" has the one-off cost per tagged image ("cache") and
    per held-out image ("heldout"), "seconds_per_iter" the step on cached candidates."""
    device = resolve_device(cfg.device)
    model = load_detector(cfg.model)
    if cfg.heads or cfg.train_backbone:
        model, _ = rebuild(model, cfg.heads or None, cfg.train_backbone or None, seed=cfg.seed)
    if cfg.box_data:  # as in finetune: box batches train the RPN, so tags use its proposals
        model.config.rpn_trained = True
    model.to(device).train()
    embedder = VocabularyEmbedder.for_config(model.config)
    _, emb = embedder(NAMES)
    emb = emb.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=1e-6)  # real optimiser state; a tiny lr (nothing is saved)
    step = TrainStep(model, {"rule": cfg.image_label_rule, "weight": cfg.image_label_weight,
                             "scope": cfg.image_label_scope})
    kinds = [k for k, given in (("box", cfg.box_data), ("label", cfg.label_data)) if given] or ["box"]
    if steps == 0:  # the loaded model (and text encoder) alone: the memory a run holds before its first step
        kinds = []
    autocast = autocast_for(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, per_image = {}, {}
    measuring = time.perf_counter()  # the model is loaded: from here on, the measurement itself
    if kinds == ["label"] and cfg.tag_features == "cached" and can_cache(model, False, 1):  # what finetune will do
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        per_image["cache"], seconds["label"], per_image["heldout"] = _measure_cached(model, cfg, emb, steps, gen, device)
        kinds = []
    for kind in kinds:
        times = []
        for i in range(steps + 1):
            images, payload = _batch(kind, cfg, gen, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            with autocast:
                loss = sum(step(kind, images, payload, emb).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first step is warm-up (allocations, kernel selection)
                times.append(time.perf_counter() - t)
        seconds[kind] = sum(times) / len(times)
    return {"device": str(device), "heads": head_preset_of(model.config) or "custom",
            "backbone": backbone_choice_of(model.config) or "custom",
            "trainable_params": sum(p.numel() for p in params), "seconds_per_iter": seconds,
            "seconds_per_image": per_image, "cached_features": bool(per_image),
            "peak_memory_mb": peak_memory_mb(device), "steps": steps,
            "measuring_s": time.perf_counter() - measuring}
