"""Which proposal an image-level label trains, and the loss it trains with (Detic, §2).

Given the top proposals of an image (the whole-image box appended last, as Detic does) and the
image's labels, each rule returns `Choice`s: a proposal index and the labels it is told to
contain.
- `max_size`   (default, best in the paper): the largest proposal takes all labels.
- `image_box`: the whole-image box takes all labels.
- `max_score`: for each label, the proposal scoring highest for that label takes it.
The loss is per-class BCE between the chosen proposal's logits and the multi-hot target,
summed over classes, averaged over choices and images; the caller multiplies by lambda.

"Not present" tags (negatives) add a multiple-instance term: for an absent class, the proposal
scoring highest for it is pushed to 0 for that class only (if it is absent, no region may fire).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import IMAGE_LABEL_RULES


@dataclass(frozen=True)
class Choice:
    proposal: int  # index into the proposals (the last one is the whole-image box)
    labels: tuple[int, ...]  # class indices this proposal is trained to contain


def with_image_box(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Append the whole-image box `[0, 0, w, h]` as the last row."""
    h, w = image_size
    return torch.cat([boxes, boxes.new_tensor([[0.0, 0.0, float(w), float(h)]])])


def choose_proposals(rule: str, boxes: torch.Tensor, class_logits: torch.Tensor,
                     labels: list[int]) -> list[Choice]:
    """`boxes`: [N + 1, 4] with the image box last; `class_logits`: [N + 1, C] (no background)."""
    if rule not in IMAGE_LABEL_RULES:
        raise ValueError(f"unknown image-label rule {rule!r}; choose one of {IMAGE_LABEL_RULES}")
    labels = sorted(set(int(k) for k in labels))
    if not labels:
        return []
    num_props = boxes.shape[0] - 1  # excluding the image box
    image_box = boxes.shape[0] - 1
    if rule == "image_box" or num_props == 0:
        return [Choice(image_box, tuple(labels))]
    if rule == "max_size":
        areas = (boxes[:num_props, 2] - boxes[:num_props, 0]) * (boxes[:num_props, 3] - boxes[:num_props, 1])
        return [Choice(int(areas.argmax()), tuple(labels))]
    scores = class_logits[:num_props]
    return [Choice(int(scores[:, k].argmax()), (k,)) for k in labels]


def negative_terms(class_logits: torch.Tensor, negatives: list[int]) -> list[tuple[int, int]]:
    """(proposal, class) pairs: for each absent class, the proposal scoring highest for it."""
    return [(int(class_logits[:, k].argmax()), k) for k in sorted(set(int(k) for k in negatives))]


def image_label_loss(class_logits: list[torch.Tensor], choices: list[list[Choice]],
                     negatives: list[list[tuple[int, int]]] | None = None) -> torch.Tensor:
    """Mean over images of (mean over choices of sum-over-classes BCE + mean negative term)."""
    negatives = negatives or [[] for _ in class_logits]
    per_image = []
    for logits, image_choices, image_negatives in zip(class_logits, choices, negatives):
        if not image_choices and not image_negatives:
            continue
        total = logits.new_zeros(())
        if image_choices:
            losses = []
            for c in image_choices:
                target = torch.zeros_like(logits[c.proposal])
                target[list(c.labels)] = 1
                losses.append(F.binary_cross_entropy_with_logits(logits[c.proposal], target, reduction="sum"))
            total = total + torch.stack(losses).mean()
        if image_negatives:
            idx = torch.tensor(image_negatives, device=logits.device)
            picked = logits[idx[:, 0], idx[:, 1]]
            total = total + F.binary_cross_entropy_with_logits(picked, torch.zeros_like(picked))
        per_image.append(total)
    if not per_image:
        return sum(lg.sum() for lg in class_logits) * 0.0
    return torch.stack(per_image).mean()
