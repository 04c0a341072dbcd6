"""Training from tags in minutes on a CPU: the frozen parts run once per image, not once per step.

With a frozen backbone and only image-level tags, nothing before the box head can change in a run
that also freezes the neck: the backbone, the neck, the proposals and the RoI alignment give each
image the same candidates and features at every step. `cache_tag_images` computes them once per
image (at the run's label size, without jitter or flips), and `tag_step` trains the box head and
the classifier on them. Detic's max-size rule needs the box head on one proposal per image, so a
step back-propagates through those rows only; rules or "not present" tags that need every
candidate's score for a name find it without gradients, from the image's own candidate scores,
refreshed every `REFRESH_VISITS` visits of that image.

Selective-search proposals (the model's RPN untrained) are cached on disk by image content, so a
second run on the same images skips them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from detector.image_labels import Choice, choose_proposals, image_label_loss, negative_terms, with_image_box
from detector.images import ImageLoadError
from detector.model import eval_mode

from .data import LabelSample

log = logging.getLogger("train")
REFRESH_VISITS = 4  # an image's no-gradient candidate scores are re-computed every this many visits
NEGATIVES_PER_STEP = 4  # "not present" tags of an image that train the box head in one step (sampled)


@dataclass
class CachedTagImage:
    boxes: torch.Tensor  # [K + 1, 4] candidates in the cached image's pixels, the whole-image box last
    pooled: torch.Tensor  # [K + 1, C, 7, 7] RoI-aligned neck features (half precision on the CPU)
    positives: list[int]
    negatives: list[int]
    size: tuple[int, int]
    logits: torch.Tensor | None = None  # no-gradient candidate logits, for max_score / negatives
    visits: int = 0
    path: str = field(default="")
    regions: torch.Tensor | None = None  # [K + 1, 1000] the ImageNet region scorer's view of each candidate
    others: list[int] = field(default_factory=list)  # names tagged on other images only: absent here


def can_cache(model, has_box_data: bool, world: int) -> bool:
    """Whether a run may train from cached features: tags only, a frozen body, one process."""
    return not has_box_data and world == 1 and bool(getattr(model.backbone, "frozen", False))


def _proposal_file(cache_dir: Path | None, path: Path, size: tuple[int, int], k: int) -> Path | None:
    if cache_dir is None:
        return None
    digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    return cache_dir / f"{digest}-{size[0]}x{size[1]}-{k}.pt.safetensors"


def _proposals(model, image: torch.Tensor, image_list, features, k: int, cache_file: Path | None) -> torch.Tensor:
    from safetensors.torch import load_file, save_file

    if cache_file is not None and cache_file.exists():
        return load_file(str(cache_file))["boxes"].to(image.device)
    proposals, _ = model.propose([image], image_list, features)
    boxes = proposals[0][:k].float()
    if cache_file is not None and model.uses_selective_search:  # an RPN's proposals depend on its weights
        tmp = cache_file.with_suffix(".tmp")
        save_file({"boxes": boxes.detach().cpu().contiguous()}, str(tmp))
        tmp.replace(cache_file)
    return boxes


def cache_tag_images(model, samples: list[LabelSample], names_index: dict[str, int], size: int,
                     device: torch.device, proposal_cache: Path | None = None,
                     on_image: Callable[[int, int], None] | None = None,
                     region_scorer=None) -> tuple[list[CachedTagImage], list[str]]:
    """(cached images, unreadable paths): the frozen parts of the model run once per image.

    With a `region_scorer` that has name adapters to train (the ImageNet one), each candidate's
    region distribution is cached too, computed from the image at full resolution as serving does."""
    from detector.images import load_image

    tagged = {names_index[n.casefold()] for s in samples for n in s.positives}
    cached, skipped = [], []
    with torch.no_grad(), eval_mode(model):
        model.transform.train()  # the data pipeline owns the scale (as in training), no resize to min_size
        try:
            for i, s in enumerate(samples):
                try:
                    loaded = load_image(s.path)
                except ImageLoadError as e:
                    skipped.append(str(s.path))
                    log.warning("skipping unreadable image: %s", e)
                    continue
                full = torch.from_numpy(loaded.array).permute(2, 0, 1).float().div_(255).to(device)
                positives = [names_index[n.casefold()] for n in s.positives]
                negatives = [names_index[n.casefold()] for n in s.negatives]
                cached.append(encode_tag_image(model, full, size, positives, negatives,
                                               sorted(tagged - set(positives) - set(negatives)), region_scorer,
                                               proposal_cache, s.path))
                if on_image:
                    on_image(i + 1, len(samples))
        finally:
            model.transform.train(model.training)
    return cached, skipped


def encode_tag_image(model, full: torch.Tensor, size: int, positives: list[int], negatives: list[int],
                     others: list[int] = (), region_scorer=None, proposal_cache: Path | None = None,
                     source: Path | None = None) -> CachedTagImage:
    """One image's cached candidates (`full`: [3, H, W] in [0, 1] as stored), resized as training
    resizes tag images (`load_resized` without jitter or flip). Call it with the model in eval mode,
    its transform in training mode (no resize) and without gradients, as `cache_tag_images` does."""
    from detector.images import resize_shorter

    k = model.config.image_label_num_proposals
    img, scale = resize_shorter(full, size)
    image_list, _ = model.transform([img])
    features = model.backbone(image_list.tensors)
    hw = tuple(image_list.image_sizes[0])
    cache_file = _proposal_file(proposal_cache, source, hw, k) if source is not None else None
    boxes = with_image_box(_proposals(model, img, image_list, features, k, cache_file), hw)
    pooled = model.roi_heads.box_roi_pool(features, [boxes], [hw])
    regions = (region_scorer.embed_regions(full, boxes / scale).cpu().clone()  # a normal tensor, not an inference one
               if region_scorer is not None else None)
    store_dtype = torch.float16 if full.device.type == "cpu" else torch.bfloat16
    return CachedTagImage(boxes.cpu(), pooled.to(store_dtype).cpu(), list(positives), list(negatives), hw,
                          path=str(source or ""), regions=regions, others=list(others))


def adapter_loss(model, batch: list[CachedTagImage], base_logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """What the tags teach the region scorer's name mapping (`detector.name_adapters`): for each
    name an image holds, its highest-scoring candidate should score high (Detic's max-score rule:
    on the scorer's distributions it picks the region that looks most like the name, where the
    largest proposal of a scene holds mostly background); for each name it does not hold (tagged
    "not", or tagged on other images only), its highest-scoring candidate low.

    `base_logits` [C, 1000]: the text-only match logits of the run's names; `rows`: each name's
    adapter row."""
    import torch.nn.functional as F

    deltas = model.name_adapters.deltas[torch.tensor(rows, device=model.name_adapters.deltas.device)]
    match = torch.sigmoid(base_logits + deltas)  # [C, 1000]
    terms = []
    for item in batch:
        scores = (item.regions.to(match.device) @ match.t()).clamp(1e-6, 1 - 1e-6)  # [K + 1, C]
        if item.positives:
            top = scores[:-1, item.positives].max(dim=0).values  # the image box is no candidate
            terms.append(F.binary_cross_entropy(top, torch.ones_like(top)))
        absent = sorted(set(item.negatives) | set(item.others))
        if absent:
            top = scores[:, absent].max(dim=0).values
            terms.append(F.binary_cross_entropy(top, torch.zeros_like(top)))
    return torch.stack(terms).mean() if terms else deltas.sum() * 0.0


def _candidate_logits(model, item: CachedTagImage, emb: torch.Tensor, device: torch.device) -> torch.Tensor:
    if item.logits is None or item.visits % REFRESH_VISITS == 0:
        with torch.no_grad():
            x = model.roi_heads.box_head(item.pooled.to(device).float())
            item.logits = model.roi_heads.box_predictor.cls_score(x.flatten(1), emb)[:, :-1].float().cpu()
    return item.logits


def tag_step(model, batch: list[CachedTagImage], emb: torch.Tensor, device: torch.device, rule: str,
             weight: float, scope: str, adapter: tuple[torch.Tensor, list[int]] | None = None
             ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Detic's image-label loss on cached candidates: ({"loss_image_label": weight·L}, diagnostics).

    The box head (scope "box_head") and the classifier see only the rows a rule chose. With
    `adapter` = (text-only match logits, adapter rows) and cached region distributions, the
    region scorer's name mapping learns from the same choices (`adapter_loss`)."""
    need_scores = rule == "max_score" or any(item.negatives for item in batch)
    rows, per_image, stats = [], [], {"size": [], "image_box": [], "score": []}
    for item in batch:
        logits = _candidate_logits(model, item, emb, device) if need_scores else None
        choices = choose_proposals(rule, item.boxes, logits if logits is not None else item.boxes.new_zeros(0, 0),
                                   item.positives)
        absent = item.negatives
        if len(absent) > NEGATIVES_PER_STEP:  # a few per step (Detic's federated loss samples too)
            absent = [absent[i] for i in torch.randperm(len(absent))[:NEGATIVES_PER_STEP].tolist()]
        negatives = negative_terms(logits, absent) if logits is not None and absent else []
        item.visits += 1
        picked = sorted({c.proposal for c in choices} | {p for p, _ in negatives})
        where = {p: j for j, p in enumerate(picked)}
        per_image.append(([Choice(where[c.proposal], c.labels) for c in choices],
                          [(where[p], k) for p, k in negatives], len(picked)))
        rows.append((item, picked))
        h, w = item.size
        for c in choices:
            b = item.boxes[c.proposal]
            stats["size"].append(float((b[2] - b[0]) * (b[3] - b[1])) / max(h * w, 1))
            stats["image_box"].append(float(c.proposal == len(item.boxes) - 1))
    pooled = torch.cat([item.pooled[picked] for item, picked in rows]).to(device).float()
    head = model.roi_heads.box_head
    if scope == "box_head":
        x = head(pooled)
    else:
        with torch.no_grad(), eval_mode(head):
            x = head(pooled)
    logits = model.roi_heads.box_predictor.cls_score(x.flatten(1), emb)[:, :-1]
    chunks = list(logits.split([n for _, _, n in per_image]))
    loss = image_label_loss(chunks, [c for c, _, _ in per_image], [n for _, n, _ in per_image])
    probs = torch.sigmoid(logits.detach().float()).cpu()
    offset = 0
    for (choices, _, n) in per_image:
        for c in choices:
            stats["score"].extend(float(probs[offset + c.proposal, k]) for k in c.labels)
        offset += n
    mean = lambda v: sum(v) / len(v) if v else 0.0  # noqa: E731
    losses = {"loss_image_label": weight * loss}
    if adapter is not None and all(item.regions is not None for item in batch):
        losses["loss_name_mapping"] = adapter_loss(model, batch, adapter[0], adapter[1])
    return (losses,
            {"select_size": mean(stats["size"]), "select_image_box": mean(stats["image_box"]),
             "max_label_score": mean(stats["score"])})
