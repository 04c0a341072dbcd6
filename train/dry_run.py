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
from detector.predictor import autocast_for
from detector.presets import load_detector

from .finetune import TrainStep, peak_memory_mb
from .run_config import RunConfig

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


def dry_run(cfg: RunConfig, steps: int = 2) -> dict:
    """{"device", "heads", "backbone", "trainable_params", "seconds_per_iter": {kind: s},
    "peak_memory_mb", "steps"}: the mean of `steps` timed steps per batch kind after one warm-up
    (`steps=0`: no step at all, so the peak memory is the loaded model's)."""
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
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
    optimizer = torch.optim.AdamW(params, lr=1e-6)  # real optimiser state; a tiny lr (nothing is saved)
    step = TrainStep(model, {"rule": cfg.image_label_rule, "weight": cfg.image_label_weight,
                             "scope": cfg.image_label_scope})
    kinds = [k for k, given in (("box", cfg.box_data), ("label", cfg.label_data)) if given] or ["box"]
    if steps == 0:  # the loaded model (and text encoder) alone: the memory a run holds before its first step
        kinds = []
    autocast = autocast_for(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = {}
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
            "peak_memory_mb": peak_memory_mb(device), "steps": steps}
