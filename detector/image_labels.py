"""Which proposal an image-level label trains, and the loss it trains with (Detic, §2).

Given the top proposals of an image (the whole-image box appended last, as Detic does) and the
image's labels, each rule returns `Choice`s: a proposal index and the labels it is told to
contain.
- `max_size`   (default, best in the paper): the largest *object-like* proposal takes all labels;
  the whole-image box is appended but never chosen by this rule (Detic: `sizes[:-1].argmax()`).
  Object-like is AlignDet's size rule, sqrt(box area / image area) <= 0.8 (`OBJECT_SQRT_AREA`):
  with selective-search proposals (which may cover the frame) the plain largest box is the whole
  image almost every time and cannot teach where things are. Only when no proposal passes does
  the plain largest one take the labels.
- `image_box`: the whole-image box takes all labels.
- `max_score`: for each label, the proposal scoring highest for that label takes it.

The loss is Detic's `image_label_losses`, label by label: for each label k, binary cross-entropy
between the logits of the proposal chosen for k and the one-hot target of k, summed over classes;
divided by the number of labels of the image, summed over images, divided by the batch size.
One deliberate difference: the image's *other* labels are left out of label k's term (Detic's
one-hot target would push them to 0 on a proposal the image says contains them); on images with
one label the two are identical.

"Not present" tags (negatives) add a multiple-instance term: for an absent class, the proposal
scoring highest for it is pushed to 0 for that class only (if it is absent, no region may fire).

The rule, the weight and the scope (which parts learn from image labels) are arguments of
`OpenVocabDetector.image_label_loss`, not part of a checkpoint's `DetectorConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import IMAGE_LABEL_RULES, IMAGE_LABEL_SCOPES

# "box_head": the loss back-propagates through the classifier, the box head and the neck (the
# RoI features of the chosen proposal), as in Detic; never into the RPN or box regression.
# "classifier": proposals and RoI features are computed without gradients; only the zero-shot
# classifier's projection learns (cheaper, weaker: the features cannot learn a new look).
DEFAULT_RULE = "max_size"
DEFAULT_WEIGHT = 0.1  # Detic's lambda
DEFAULT_SCOPE = "box_head"
OBJECT_SQRT_AREA = 0.8  # AlignDet's proposal filter: larger boxes are frames, not objects


@dataclass(frozen=True)
class Choice:
    proposal: int  # index into the proposals (the last one is the whole-image box)
    labels: tuple[int, ...]  # class indices this proposal is trained to contain


def check_rule(rule: str) -> str:
    if rule not in IMAGE_LABEL_RULES:
        raise ValueError(f"unknown image-label rule {rule!r}; choose one of {IMAGE_LABEL_RULES}")
    return rule


def check_scope(scope: str) -> str:
    if scope not in IMAGE_LABEL_SCOPES:
        raise ValueError(f"unknown image-label scope {scope!r}; choose one of {IMAGE_LABEL_SCOPES}")
    return scope


def with_image_box(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Append the whole-image box `[0, 0, w, h]` as the last row."""
    h, w = image_size
    return torch.cat([boxes, boxes.new_tensor([[0.0, 0.0, float(w), float(h)]])])


def choose_proposals(rule: str, boxes: torch.Tensor, class_logits: torch.Tensor,
                     labels: list[int]) -> list[Choice]:
    """`boxes`: [N + 1, 4] with the image box last; `class_logits`: [N + 1, C] (no background)."""
    check_rule(rule)
    labels = sorted(set(int(k) for k in labels))
    if not labels:
        return []
    num_props = boxes.shape[0] - 1  # excluding the image box
    image_box = boxes.shape[0] - 1
    if rule == "image_box" or num_props == 0:
        return [Choice(image_box, tuple(labels))]
    if rule == "max_size":
        return [Choice(max_size_index(boxes), tuple(labels))]
    scores = class_logits[:num_props]  # max_score: the image box is not a candidate either
    return [Choice(int(scores[:, k].argmax()), (k,)) for k in labels]


def object_like(boxes: torch.Tensor) -> torch.Tensor:
    """Mask over `boxes` (image box last, excluded) of the proposals small enough to be objects."""
    image = boxes[-1]
    image_area = ((image[2] - image[0]) * (image[3] - image[1])).clamp(min=1e-6)
    areas = (boxes[:-1, 2] - boxes[:-1, 0]) * (boxes[:-1, 3] - boxes[:-1, 1])
    return (areas / image_area).sqrt() <= OBJECT_SQRT_AREA + 1e-6


def max_size_index(boxes: torch.Tensor) -> int:
    """Detic's max-size choice among the object-like proposals of `boxes` (image box last)."""
    areas = (boxes[:-1, 2] - boxes[:-1, 0]) * (boxes[:-1, 3] - boxes[:-1, 1])
    keep = object_like(boxes)
    if keep.any():
        areas = torch.where(keep, areas, areas.new_full((), -1.0))
    return int(areas.argmax())


def negative_terms(class_logits: torch.Tensor, negatives: list[int]) -> list[tuple[int, int]]:
    """(proposal, class) pairs: for each absent class, the proposal scoring highest for it."""
    return [(int(class_logits[:, k].argmax()), k) for k in sorted(set(int(k) for k in negatives))]


def _label_terms(logits: torch.Tensor, choices: list[Choice]) -> torch.Tensor:
    """Sum over (label k, its proposal) of BCE(logits[proposal], one-hot k), the image's other
    labels masked out, summed over classes; divided by the number of labels."""
    pairs = [(c.proposal, k) for c in choices for k in c.labels]
    positives = sorted({k for _, k in pairs})
    rows = logits[[p for p, _ in pairs]].float()  # [L, C]
    target = torch.zeros_like(rows)
    target[torch.arange(len(pairs)), [k for _, k in pairs]] = 1
    weight = torch.ones_like(rows)
    weight[:, positives] = 0
    weight[torch.arange(len(pairs)), [k for _, k in pairs]] = 1
    bce = F.binary_cross_entropy_with_logits(rows, target, weight=weight, reduction="sum")
    return bce / len(positives)


def image_label_loss(class_logits: list[torch.Tensor], choices: list[list[Choice]],
                     negatives: list[list[tuple[int, int]]] | None = None) -> torch.Tensor:
    """Per image: label terms (see `_label_terms`) + mean negative term; summed, / batch size."""
    negatives = negatives or [[] for _ in class_logits]
    total = sum(lg.sum() for lg in class_logits) * 0.0  # keeps the graph when nothing is labelled
    for logits, image_choices, image_negatives in zip(class_logits, choices, negatives):
        if image_choices:
            total = total + _label_terms(logits, image_choices)
        if image_negatives:
            idx = torch.tensor(image_negatives, device=logits.device)
            picked = logits[idx[:, 0], idx[:, 1]].float()
            total = total + F.binary_cross_entropy_with_logits(picked, torch.zeros_like(picked))
    return total / max(len(class_logits), 1)


def choice_stats(boxes: list[torch.Tensor], class_logits: list[torch.Tensor], choices: list[list[Choice]],
                 image_sizes: list[tuple[int, int]]) -> dict[str, float]:
    """Detic's diagnostics, averaged over (image, label): relative size and centre of the chosen
    proposal, how often it is the whole-image box, and the chosen proposal's score for the label."""
    size, x, y, image_box, score = [], [], [], [], []
    for b, lg, image_choices, (h, w) in zip(boxes, class_logits, choices, image_sizes):
        if not image_choices:
            continue
        rows = b.detach().float().cpu().tolist()  # one device sync per image
        probs = torch.sigmoid(lg.detach().float()).cpu()
        for c in image_choices:
            x1, y1, x2, y2 = rows[c.proposal]
            for k in c.labels:
                size.append((x2 - x1) * (y2 - y1) / max(h * w, 1))
                x.append((x1 + x2) / 2 / max(w, 1))
                y.append((y1 + y2) / 2 / max(h, 1))
                image_box.append(float(c.proposal == len(rows) - 1))
                score.append(float(probs[c.proposal, k]))
    if not size:
        return {}
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {"select_size": mean(size), "select_x": mean(x), "select_y": mean(y),
            "select_image_box": mean(image_box), "max_label_score": mean(score)}
