"""COCO box AP (pycocotools) over all classes, the novel and base subsets, and per class.

`coco_metrics` scores a list of COCO-format detections against a ground-truth dict and is
model-free (so it is tested on perfect and shuffled predictions); `evaluate_model` runs a
detector over a COCO dataset with the dataset's category names as the vocabulary.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from detector.annotate import coco_annotations
from detector.images import ImageLoadError
from detector.vocabulary import normalize_name

from .data import DataError, read_coco_boxes


def _coco_eval(gt, dets: list[dict], cat_ids: list[int]):
    from pycocotools.cocoeval import COCOeval

    if not dets:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _summary(ev) -> dict[str, float]:
    if ev is None:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    return {"AP": float(max(ev.stats[0], 0)), "AP50": float(max(ev.stats[1], 0)), "AP75": float(max(ev.stats[2], 0))}


def coco_metrics(gt_data: dict, detections: list[dict], novel_names: list[str] | None = None) -> dict:
    """{"all", "novel", "base": {AP, AP50, AP75}, "per_class": {name: AP or None}}."""
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {**gt_data, "annotations": [{**a, "area": a.get("area", a["bbox"][2] * a["bbox"][3]),
                                              "iscrowd": a.get("iscrowd", 0)}
                                             for a in gt_data.get("annotations", [])]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    names = {c["id"]: normalize_name(c["name"]) for c in gt_data["categories"]}
    with_gt = sorted({a["category_id"] for a in gt.dataset["annotations"]})
    novel = {n.casefold() for n in (novel_names or [])}
    unknown = sorted(n for n in (novel_names or []) if n.casefold() not in {v.casefold() for v in names.values()})
    if unknown:
        raise ValueError(f"novel class names not among the dataset's categories: {', '.join(unknown)}")
    novel_ids = [c for c in with_gt if names[c].casefold() in novel]
    base_ids = [c for c in with_gt if names[c].casefold() not in novel]
    ev_all = _coco_eval(gt, detections, with_gt) if with_gt else None
    result = {"all": _summary(ev_all), "per_class": {}}
    if novel_names:
        result["novel"] = _summary(_coco_eval(gt, detections, novel_ids) if novel_ids else None)
        result["base"] = _summary(_coco_eval(gt, detections, base_ids) if base_ids else None)
    if ev_all is None:  # no detection at all: every class with boxes scores 0 (it had listed no class)
        result["per_class"] = {names[c]: 0.0 for c in with_gt}
    else:
        precision = ev_all.eval["precision"]  # [T, R, K, A, M]
        for k, cat in enumerate(ev_all.params.catIds):
            p = precision[:, :, k, 0, -1]
            result["per_class"][names[cat]] = float(np.mean(p[p > -1])) if (p > -1).any() else None
    return result


def evaluate_model(model_or_predictor, data: str | Path, image_dir: str | Path, novel: list[str] | None = None,
                   embedder=None, score_threshold: float = 0.01, max_detections: int = 100) -> dict:
    """Run a detector over a COCO dataset and score it with `coco_metrics`."""
    from detector.predictor import Predictor

    gt, _ = read_coco_boxes(data)
    image_dir = Path(image_dir)
    if isinstance(model_or_predictor, Predictor):
        predictor = model_or_predictor
    else:
        predictor = Predictor(model_or_predictor, device=str(next(model_or_predictor.parameters()).device))
        if embedder is not None:
            predictor.embedder = embedder
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    names = [normalize_name(c["name"]) for c in cats]
    dets, skipped = [], 0
    for info in gt["images"]:
        try:  # the file as it is: the predictor decodes it and reports boxes in its original pixels
            d = predictor.predict(image_dir / info["file_name"], names, score_threshold=score_threshold,
                                  max_detections=max_detections)[0]
        except ImageLoadError:
            skipped += 1
            continue
        dets += coco_annotations(d, info["id"], [c["id"] for c in cats], first_id=len(dets) + 1)
    if gt["images"] and skipped == len(gt["images"]):
        raise DataError(f"none of the {len(gt['images'])} images of '{data}' could be read from '{image_dir}' "
                        "(their file_name is relative to --images)")
    result = coco_metrics(gt, dets, novel)
    result["images"] = len(gt["images"]) - skipped
    result["skipped_images"] = skipped
    return result
