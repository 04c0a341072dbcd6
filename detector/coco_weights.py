"""Initialise localisation from torchvision's COCO-trained Faster R-CNN (ResNet-50 FPN v2).

Our detector shares torchvision's module layout (ResNet body via IntermediateLayerGetter, FPN,
RPNHead, FastRCNNConvFCHead), so the backbone, FPN, RPN and box head load key for key. Two
parts differ by design and are reported as such, never silently:
- COCO's 91-way softmax classifier (`box_predictor.cls_score`) has no place in a zero-shot
  head: it is dropped, and our zero-shot classifier stays freshly initialised.
- COCO's box regression is class-specific ([91 x 4] outputs); ours is class-agnostic. We use
  the mean of the real foreground classes' regressors (skipping background and COCO's unused
  'N/A' slots). Faster R-CNN's per-class regressors are close to one another (they all refine
  a proposal towards the object it overlaps), so their mean is a good class-agnostic
  regressor for known and unseen classes alike, better than any single class's (which is
  biased to that class's shapes) and far better than a random one.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
EXPECTED_UNUSED = ("roi_heads.box_predictor.cls_score.",)  # COCO classifier: replaced
# our zero-shot classifier (trained here) and what tags teach the region scorer (empty until then)
EXPECTED_NEW = ("roi_heads.box_predictor.cls_score.", "name_adapters.")


class WeightMappingError(RuntimeError):
    """The torchvision weights do not fit the architecture beyond the documented differences."""


def foreground_indices(categories: list[str]) -> list[int]:
    return [i for i, c in enumerate(categories) if c not in ("__background__", "N/A")]


def map_frcnn_state(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor],
                    categories: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """-> (state dict for `ours`' keys, report with loaded/missing/unexpected key lists)."""
    mapped: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in theirs.items():
        if key == "roi_heads.box_predictor.bbox_pred.weight":
            fg = foreground_indices(categories)
            mapped[key] = value.view(len(categories), 4, -1)[fg].mean(0)
        elif key == "roi_heads.box_predictor.bbox_pred.bias":
            fg = foreground_indices(categories)
            mapped[key] = value.view(len(categories), 4)[fg].mean(0)
        elif key in ours and ours[key].shape == value.shape:
            mapped[key] = value
        else:
            unexpected.append(key)
    missing = [k for k in ours if k not in mapped]
    report = {
        "loaded": len(mapped),
        "missing": missing,
        "unexpected": unexpected,
        "missing_by_design": [k for k in missing if k.startswith(EXPECTED_NEW)],
        "unexpected_by_design": [k for k in unexpected if k.startswith(EXPECTED_UNUSED)
                                 or k.endswith("num_batches_tracked")],
    }
    surprise_missing = sorted(set(missing) - set(report["missing_by_design"]))
    surprise_unexpected = sorted(set(unexpected) - set(report["unexpected_by_design"]))
    if surprise_missing or surprise_unexpected:
        raise WeightMappingError(
            f"torchvision COCO weights do not fit: {len(surprise_missing)} missing (e.g. {surprise_missing[:3]}), "
            f"{len(surprise_unexpected)} unexpected (e.g. {surprise_unexpected[:3]})"
        )
    return mapped, report


def init_from_torchvision_coco(model, state: dict[str, torch.Tensor] | None = None) -> dict | None:
    """Load COCO Faster R-CNN v2 weights into `model` (downloaded via torchvision's weights API
    and cached). Returns the mapping report, or None (with one warning) when unavailable."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_V2_Weights

    from .backbones import load_torchvision_weights

    weights = FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1
    if state is None:
        state = load_torchvision_weights(weights)
    if state is None:
        return None
    mapped, report = map_frcnn_state(model.state_dict(), state, list(weights.meta["categories"]))
    model.load_state_dict(mapped, strict=False)
    log.info("COCO Faster R-CNN v2 weights: %d tensors loaded; %d new (zero-shot classifier); "
             "%d dropped (COCO classifier, BN counters)", report["loaded"], len(report["missing_by_design"]),
             len(report["unexpected_by_design"]))
    return report
