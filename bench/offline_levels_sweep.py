"""Replay the offline model's box scoring under other settings, on one half of
`bench/offline_zero_shot.py`'s scenes (default: the tune half; settings are chosen there only).

Proposals and the three levels' feature maps are computed once per scene; each variant then
re-reads the boxes (level blend, fit exponents), maps them onto the vocabulary, applies part
suppression + NMS and a threshold, and is scored with the benchmark's own metrics (shown at the
threshold, top-3, absent-name boxes per 5 scenes).

    python bench/offline_levels_sweep.py [--half tune] [--composites 8]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import offline_zero_shot as bench  # noqa: E402

from detector.roi_heads import select_detections  # noqa: E402


def capture(predictor, scene_list) -> list[dict]:
    """Per scene: the image tensor and boxes the scorer sees, and its three level maps."""
    scorer, seen = predictor.region_scorer, {}
    original = scorer.roi_distribution

    def spy(image, boxes):
        seen["image"], seen["boxes"] = image, boxes
        return original(image, boxes)

    scorer.roi_distribution = spy
    out = []
    for name, image, objects in scene_list:
        predictor.clear_cache()
        predictor.predict(image, "cat")
        img, boxes = seen["image"], seen["boxes"]
        h, w = img.shape[-2:]
        s0 = min(scorer.min_size / min(h, w), scorer.max_size / max(h, w))
        with torch.inference_mode():
            maps = [scorer._level_map(img, s0 / 2**i, i) for i in range(scorer.levels)]
        out.append({"name": name, "objects": objects, "image": img, "boxes": boxes, "maps": maps, "s0": s0})
    scorer.roi_distribution = original
    return out


@torch.inference_mode()
def distributions(scorer, scene: dict, blend: str, cov: float, prec: float, first: int = 0) -> torch.Tensor:
    scorer.level_blend, scorer.fit_coverage, scorer.fit_precision, scorer.first_level = blend, cov, prec, first
    boxes, w = scene["boxes"], scene["image"].shape[-1]
    side = (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values.clamp(min=1) * scene["s0"]
    weights = scorer.level_weights(side)
    out = torch.zeros(len(boxes), 1000)
    for i, fmap in enumerate(scene["maps"]):
        sel = weights[:, i] > 0
        if sel.any():
            out[sel] += weights[sel, i, None] * scorer._classify_maps(fmap, boxes[sel], w)
    if cov > 0 or prec > 0:
        out = out * scorer.fit_factors(scene["maps"][scorer.fit_level], boxes, w)
    return out


def score(captured, dists, probs_fn, threshold: float, part_ratio: float, nms: float) -> dict:
    shown_hits, top3, target, absent = 0, 0, 0, 0
    for scene, dist in zip(captured, dists):
        scores = probs_fn(dist)
        names = bench.VOCABULARY
        shown = select_detections(scene["boxes"], scores, threshold, nms, 100, part_ratio=part_ratio)
        full = select_detections(scene["boxes"], scores, 0.0, nms, 100, part_ratio=part_ratio)
        present = {n for n, _ in scene["objects"]} | bench.ALSO_PRESENT.get(scene["name"], set())
        absent += sum(names[int(c)] not in present for c in shown["labels"])
        ranked = list(dict.fromkeys(names[int(c)] for c in full["labels"]))  # already score-ordered
        for name, box in scene["objects"]:
            if name in bench.NO_IMAGENET_COUNTERPART:
                continue
            target += 1
            top3 += name in ranked[:3]
            shown_hits += any(names[int(c)] == name and bench.iou(b.tolist(), box) >= 0.5
                              for b, c in zip(shown["boxes"], shown["labels"]))
    return {"shown": shown_hits / target, "top3": top3 / target, "absent_per_5": 5 * absent / len(captured)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--half", choices=["tune", "report"], default="tune")
    ap.add_argument("--composites", type=int, default=8)
    ap.add_argument("--blend", nargs="+", default=["nearest", "soft"])
    ap.add_argument("--cov", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    ap.add_argument("--prec", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    ap.add_argument("--first-level", nargs="+", type=int, default=[0])
    ap.add_argument("--part", nargs="+", type=float, default=[0.9, 1.1])
    ap.add_argument("--thr", nargs="+", type=float, default=[0.1, 0.15, 0.2, 0.3])
    ap.add_argument("--extra-segmentations", nargs="*", type=float, default=[],
                    help="more selective-search k besides 300 (issue 14 used 100 1000)")
    args = ap.parse_args()
    if args.extra_segmentations:
        import dataclasses

        import detector.proposals as proposals

        proposals.DETECTION = dataclasses.replace(proposals.DETECTION, extra_scales=tuple(args.extra_segmentations))
    predictor = bench.build("after", "cpu")
    scorer = predictor.region_scorer
    captured = capture(predictor, bench.scenes(args.composites, args.half))
    _, emb = predictor.embed(bench.VOCABULARY)
    probs = lambda d: scorer.probabilities(d, emb)  # noqa: E731
    print(f"{args.half} half: {len(captured)} scenes")
    print(f"selective search k: 300 {' '.join(map(str, args.extra_segmentations))}")
    print(f"{'blend':8s} {'first':>5s} {'cov':>4s} {'prec':>4s} {'part':>5s} {'thr':>5s} {'shown':>6s} {'top3':>6s} "
          f"{'absent/5':>8s}")
    for blend, first, cov, prec in itertools.product(args.blend, args.first_level, args.cov, args.prec):
        dists = [distributions(scorer, sc, blend, cov, prec, first) for sc in captured]
        for part, thr in itertools.product(args.part, args.thr):
            r = score(captured, dists, probs, thr, part, predictor.config.nms_threshold)
            print(f"{blend:8s} {first:5d} {cov:4.1f} {prec:4.1f} {part:5.2f} {thr:5.2f} {r['shown']:6.0%} "
                  f"{r['top3']:6.0%} {r['absent_per_5']:8.1f}", flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
