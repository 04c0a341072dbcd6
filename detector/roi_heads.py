"""torchvision's `RoIHeads` with Detic's zero-shot classification.

Differences from the stock head, all from Detic:
- classification is per-class sigmoid BCE (background = all zeros) instead of softmax, with the
  federated loss (positives of the batch + classes sampled by frequency^0.5) on vocabularies
  larger than `federated_threshold`;
- box regression is class-agnostic (one box per RoI), so it transfers to names never seen;
- the class embeddings are an argument, so one model serves many vocabularies concurrently.
Proposal sampling, matching and box coding are torchvision's, inherited unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import batched_nms, clip_boxes_to_image, nms, remove_small_boxes

MAX_CANDIDATES = 20_000  # cap on (box, class) pairs entering NMS, for huge vocabularies
NMS_SHIFT_LIMIT = 8_000  # above this many candidates, torchvision's per-group NMS loop is cheaper


def federated_classes(
    gt_classes: torch.Tensor, num_classes: int, num_sample: int, freq_weight: torch.Tensor | None
) -> torch.Tensor:
    """Classes receiving a loss: those present in the batch plus ones sampled by frequency^0.5."""
    present = torch.unique(gt_classes[gt_classes < num_classes])
    if num_sample <= len(present):
        return present
    weight = (
        freq_weight.to(gt_classes.device).float().clone()
        if freq_weight is not None
        else torch.ones(num_classes, device=gt_classes.device)
    )
    weight[present] = 0
    n = min(num_sample - len(present), int((weight > 0).sum()))
    sampled = torch.multinomial(weight, n, replacement=False) if n > 0 else present.new_zeros(0)
    return torch.cat([present, sampled])


def sigmoid_classification_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    federated_threshold: int,
    federated_num: int,
    freq_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """`logits`: [N, C + 1]; `gt_classes` in [0, C] with C = background. Mean over RoIs."""
    num_classes = logits.shape[1] - 1
    if logits.shape[0] == 0:
        return logits.sum() * 0
    target = F.one_hot(gt_classes, num_classes + 1)[:, :num_classes].to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits[:, :num_classes], target, reduction="none")
    if num_classes > federated_threshold:
        keep = federated_classes(gt_classes, num_classes, federated_num, freq_weight)
        mask = torch.zeros(num_classes, device=logits.device, dtype=loss.dtype)
        mask[keep] = 1
        loss = loss * mask
    return loss.sum() / logits.shape[0]


class ZeroShotRoIHeads(RoIHeads):
    def __init__(self, *args, federated_threshold: int = 50, federated_num: int = 50, **kwargs):
        super().__init__(*args, **kwargs)
        self.federated_threshold = federated_threshold
        self.federated_num = federated_num
        self.class_freq: torch.Tensor | None = None  # optional, for federated sampling

    def box_features(self, features, proposals, image_shapes) -> torch.Tensor:
        return self.box_head(self.box_roi_pool(features, proposals, image_shapes))

    def forward(self, features, proposals, image_shapes, targets=None, class_embeddings=None):
        """Training losses. (Inference is `OpenVocabDetector.encode` + `classify`: one path.)"""
        if class_embeddings is None:
            raise ValueError("class_embeddings are required (set a vocabulary first)")
        if self.training:
            proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
            x = self.box_features(features, proposals, image_shapes)
            logits, deltas = self.box_predictor(x, class_embeddings)
            labels = torch.cat(labels)
            num_classes = class_embeddings.shape[0]
            gt = torch.where(labels > 0, labels - 1, torch.full_like(labels, num_classes))
            loss_cls = sigmoid_classification_loss(
                logits, gt, self.federated_threshold, self.federated_num, self.class_freq
            )
            regression_targets = torch.cat(regression_targets)
            pos = torch.where(labels > 0)[0]
            loss_box = F.smooth_l1_loss(
                deltas[pos], regression_targets[pos], beta=1 / 9, reduction="sum"
            ) / max(labels.numel(), 1)
            return [], {"loss_classifier": loss_cls, "loss_box_reg": loss_box}

        raise RuntimeError("inference goes through OpenVocabDetector.encode + classify")

    def decode_boxes(self, deltas, proposals, image_shapes) -> list[torch.Tensor]:
        """Refined boxes per image, clipped to it: `clip_boxes_to_image`'s values, for the whole
        batch in two ops (the per-box limits come from the host, no sync)."""
        counts = [len(p) for p in proposals]
        boxes = self.box_coder.decode(deltas, proposals).reshape(-1, 4)
        if torch.jit.is_tracing():  # ONNX export: symbolic sizes
            return [clip_boxes_to_image(b, s) for b, s in zip(boxes.split(counts), image_shapes)]
        limits = np.repeat(np.array([[w, h, w, h] for h, w in image_shapes], np.float32), counts, axis=0)
        boxes = torch.minimum(boxes.clamp(min=0), torch.from_numpy(limits).to(boxes.device, boxes.dtype))
        return list(boxes.split(counts))


def suppress_parts(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, ratio: float,
                   inside: float = 0.9) -> torch.Tensor:
    """Keep-mask dropping each detection that lies (>= `inside` of its area) within a larger
    detection of the same label scoring at least `ratio` times as high.

    A classifier scoring crops (the ImageNet/CLIP region scorers) rates a cat's head as "cat"
    about as confidently as the whole cat; plain IoU-NMS keeps both (their IoU is small).
    Only detections of one label are compared: each against the members of its own label, an
    [n, largest label] comparison (all n x n, at threshold 0 with 2,000 names, took 10 s a call)."""
    n = len(boxes)
    if n < 2:
        return torch.ones(n, dtype=torch.bool, device=boxes.device)
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    group = torch.repeat_interleave(torch.arange(len(counts), device=boxes.device), counts)  # per sorted row
    size = int(counts.max())  # one host sync: the comparison's width
    offsets = torch.arange(size, device=boxes.device)
    valid = offsets[None, :] < counts[group][:, None]
    members = ((torch.cumsum(counts, 0) - counts)[group][:, None] + offsets[None, :]).clamp(max=n - 1)  # [n, size]
    b, s = boxes[order], scores[order]
    other = b[members]
    lt = torch.maximum(b[:, None, :2], other[..., :2])
    rb = torch.minimum(b[:, None, 2:], other[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    part_of = valid & (inter >= inside * area[:, None]) & (area[members] > area[:, None])  # inside a larger one
    part_of &= s[members] >= ratio * s[:, None]
    keep = torch.empty(n, dtype=torch.bool, device=boxes.device)
    keep[order] = ~part_of.any(dim=1)
    return keep


def select_detections(boxes, scores, score_thresh, nms_thresh, max_detections,
                      part_ratio: float = 0.0) -> dict[str, torch.Tensor]:
    """Class-agnostic `boxes` [N, 4] and `scores` [N, C] -> per-class NMS'd detections
    (and, with `part_ratio` > 0, `suppress_parts` before NMS)."""
    box_idx, cls_idx = torch.where(scores > score_thresh)
    flat = scores[box_idx, cls_idx]
    if flat.numel() > MAX_CANDIDATES:
        flat, top = flat.topk(MAX_CANDIDATES)
        box_idx, cls_idx = box_idx[top], cls_idx[top]
    b = boxes[box_idx].float()
    keep = remove_small_boxes(b, 1e-2)
    b, flat, cls_idx = b[keep], flat[keep], cls_idx[keep]
    if part_ratio > 0:  # before NMS, so a near-duplicate of the whole cannot remove the whole first
        keep = suppress_parts(b, flat, cls_idx, part_ratio)
        b, flat, cls_idx = b[keep], flat[keep], cls_idx[keep]
    keep = batched_nms(b, flat, cls_idx, nms_thresh)
    keep = keep[:max_detections]
    return {"boxes": b[keep], "scores": flat[keep], "labels": cls_idx[keep]}



def grouped_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """`batched_nms` for many groups (image x class): one NMS call with each group shifted apart,
    in float64 so that group offsets of ~10^7 px keep sub-pixel precision (torchvision's float32
    shift would not; and its CPU fallback above 1,000 boxes loops over groups, one sync each).
    Above `NMS_SHIFT_LIMIT` boxes the O(n^2) single call costs more than that loop: torchvision's."""
    if len(boxes) > NMS_SHIFT_LIMIT:
        return batched_nms(boxes, scores, groups, threshold)
    b = boxes.double()
    shifted = b + (groups.double() * (b.max() + 1) if len(b) else groups.double())[:, None]
    return nms(shifted, scores.double(), threshold)


def select_detections_batched(boxes, scores, image_ids, num_images: int, score_thresh, nms_thresh,
                              part_ratio: float = 0.0) -> dict[str, torch.Tensor]:
    """`select_detections` for the boxes of many images at once (`boxes` [N, 4], `scores` [N, C],
    `image_ids` [N]): one mask for the threshold and the small-box rule (one host sync), at most
    `MAX_CANDIDATES` per image on average, `suppress_parts` and NMS within image x class groups.
    Returns boxes, scores, labels and images of the kept detections, best first (per-image
    `max_detections` is the caller's, after its copy to the host)."""
    num_classes = scores.shape[1]
    wh = boxes[:, 2:].float() - boxes[:, :2].float()
    big = (wh >= 1e-2).all(dim=1)  # remove_small_boxes(boxes, 1e-2)
    box_idx, cls_idx = torch.where((scores > score_thresh) & big[:, None])
    flat = scores[box_idx, cls_idx]
    if flat.numel() > MAX_CANDIDATES * num_images:
        flat, top = flat.topk(MAX_CANDIDATES * num_images)
        box_idx, cls_idx = box_idx[top], cls_idx[top]
    b = boxes[box_idx].float()
    groups = image_ids[box_idx] * num_classes + cls_idx
    if part_ratio > 0:  # before NMS, so a near-duplicate of the whole cannot remove the whole first
        keep = suppress_parts(b, flat, groups, part_ratio).nonzero().squeeze(1)  # one sync for three
        b, flat, groups = b[keep], flat[keep], groups[keep]
    keep = grouped_nms(b, flat, groups, nms_thresh)
    groups = groups[keep]
    return {"boxes": b[keep], "scores": flat[keep], "labels": groups % num_classes,
            "images": torch.div(groups, num_classes, rounding_mode="floor")}
