"""Object proposals that need no training: selective search, filtered as in AlignDet.

One module for both users of unsupervised proposals:
- the detector, whose RPN has never been trained (`DetectorConfig.rpn_trained` is False), takes
  its proposals from here instead of from random RPN weights;
- AlignDet pre-training, which treats each kept proposal as a pseudo box with its own id.

Pipeline (`selective_search`): resize so the longer side is `work_side` (the graph-segmentation
parameters are in pixels, so a fixed working size makes them mean the same on every image) ->
OpenCV contrib's selective search (a Felzenszwalb segmentation per k in `scale` + `extra_scales`, `sigma`,
`min_size`; colour + size + texture + fill similarity) -> boxes in the image's pixels ->
`filter_proposals`: AlignDet's rules (w, h >= 32 px, scaled down for small images; aspect ratio
<= 3; sqrt(box area / image area) <= 0.8), near-duplicates removed (IoU >= `dedup_iou`), and at
most `top_k` kept.

OpenCV returns selective search's boxes in a *randomised* order (Uijlings' ranking multiplies the
hierarchy level by a random number) that no seed controls. The set of boxes is deterministic, so
we rank it ourselves: largest first (large regions are high in the grouping hierarchy, which is
what selective search's own ranking favours), ties broken by coordinates. Same image -> same
proposals, on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou, nms


@dataclass(frozen=True)
class ProposalParams:
    scale: float = 300.0  # Felzenszwalb k: larger -> larger segments
    extra_scales: tuple[float, ...] = ()  # more segmentations (other k), their hierarchies pooled
    sigma: float = 0.9
    min_size: int = 100  # smallest segment, pixels at the working size
    work_side: int = 512  # longer image side selective search runs at
    min_box: float = 32.0  # minimum box width and height in pixels, for images >= reference_side
    reference_side: int = 480  # shorter side at which `min_box` applies unscaled (COCO-like)
    max_aspect: float = 3.0
    max_sqrt_area: float = 0.8  # sqrt(box area / image area)
    dedup_iou: float = 0.9
    top_k: int = 50


ALIGNDET = ProposalParams()


def _to_uint8_rgb(image) -> np.ndarray:
    """[3, H, W] float tensor in [0, 1] or H x W x 3 uint8 array -> contiguous H x W x 3 uint8."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a [3, H, W] image tensor, got {tuple(image.shape)}")
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError("expected an H x W x 3 uint8 RGB array")
    return np.ascontiguousarray(image)


def raw_selective_search(rgb: np.ndarray, params: ProposalParams = ALIGNDET) -> np.ndarray:
    """All selective-search boxes [N, 4] xyxy (float32) in `rgb`'s pixels, unfiltered, unordered."""
    import cv2

    seg = cv2.ximgproc.segmentation
    h, w = rgb.shape[:2]
    s = params.work_side / max(h, w)
    small = rgb if s == 1 else cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))),
                                          interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    search = seg.createSelectiveSearchSegmentation()
    search.addImage(np.ascontiguousarray(small[..., ::-1]))  # OpenCV expects BGR
    for k in (params.scale, *params.extra_scales):  # as OpenCV's own "quality" mode: one hierarchy per k
        search.addGraphSegmentation(seg.createGraphSegmentation(params.sigma, k, params.min_size))
    search.addStrategy(seg.createSelectiveSearchSegmentationStrategyMultiple(
        seg.createSelectiveSearchSegmentationStrategyColor(),
        seg.createSelectiveSearchSegmentationStrategySize(),
        seg.createSelectiveSearchSegmentationStrategyTexture(),
        seg.createSelectiveSearchSegmentationStrategyFill(),
    ))
    rects = np.asarray(search.process(), dtype=np.float32).reshape(-1, 4)  # x, y, w, h
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) / s
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes


def filter_proposals(boxes: torch.Tensor, image_size: tuple[int, int],
                     params: ProposalParams = ALIGNDET) -> torch.Tensor:
    """AlignDet's filter + de-duplication + deterministic ranking (largest first) + top-k.

    `boxes`: [N, 4] xyxy in the pixels of an image of `image_size` = (height, width)."""
    h, w = image_size
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    min_box = params.min_box * min(1.0, min(h, w) / params.reference_side)
    keep = (bw >= min_box) & (bh >= min_box)
    keep &= torch.maximum(bw / bh.clamp(min=1e-6), bh / bw.clamp(min=1e-6)) <= params.max_aspect
    keep &= (bw * bh / float(h * w)).sqrt() <= params.max_sqrt_area + 1e-6
    boxes = boxes[keep]
    if len(boxes) == 0:
        return boxes
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # Deterministic order: area descending, then x1, y1, x2, y2 (a stable lexicographic sort).
    order = torch.arange(len(boxes))
    for key in (boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -area):
        order = order[torch.sort(key[order], stable=True).indices]
    boxes = boxes[order]
    rank_score = torch.linspace(1.0, 0.0, len(boxes))
    kept = nms(boxes, rank_score, params.dedup_iou)  # keeps the earlier (larger) of near-duplicates
    return boxes[kept.sort().values][: params.top_k]


def selective_search(image, params: ProposalParams = ALIGNDET) -> torch.Tensor:
    """Filtered proposals [K <= top_k, 4] (xyxy float32, CPU) in `image`'s pixels.

    `image`: H x W x 3 uint8 RGB array or [3, H, W] float tensor in [0, 1] (any device)."""
    rgb = _to_uint8_rgb(image)
    return filter_proposals(torch.from_numpy(raw_selective_search(rgb, params)), rgb.shape[:2], params)


def best_iou(proposals: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """For each target box, the IoU of the best-matching proposal ([T]; 0 without proposals)."""
    if len(proposals) == 0:
        return torch.zeros(len(targets))
    return box_iou(targets.float(), proposals.float()).max(dim=1).values


# Detection-time proposals for a detector whose RPN is untrained: objects may fill the frame
# (no upper size limit) and be long and thin; the 50 largest after de-duplication. One
# segmentation (k = 300): the three of issue 14 (k = 100, 300, 1000) cost ~3x the time and, with
# the region scorer's box fit (issue 20), did not find more objects on the tune half of
# bench/offline_zero_shot.py (docs/offline_zero_shot.md).
DETECTION = ProposalParams(max_sqrt_area=1.0, max_aspect=5.0, top_k=50)
