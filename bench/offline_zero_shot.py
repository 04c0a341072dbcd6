"""Does the packaged offline model find real things before any training? Re-runnable, offline.

Images: real photographs that ship with scikit-image (chelsea, coffee, rocket, astronaut, camera)
with hand-drawn boxes below, plus synthetic composites: those objects cut out by their boxes and
pasted, resized, at seeded random positions onto scikit-image textures (grass, gravel, brick), so
their boxes are known exactly. Every image is searched with the same 20-name vocabulary.

Per object (those with an ImageNet counterpart are the target set; "person" has none):
- top-3 name: the right name is among the 3 names with the highest-scoring box in the image;
- recall@10: one of the image's 10 highest-scoring detections has the right name and IoU >= 0.5;
- best-box IoU: IoU between the object and the highest-scoring box carrying its name (0 if none).

"before" is today's offline model (RPN proposals + random head, no region scores: the `offline`
preset with `rpn_trained=True, region_scoring=False`); "after" is the `offline` preset (selective
search + ImageNet region scores). Also: how many boxes "cat" gets at the default threshold on
images without a cat.

    python bench/offline_zero_shot.py [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector import OpenVocabDetector, Predictor  # noqa: E402
from detector.presets import PRESETS  # noqa: E402

VOCABULARY = ["cat", "dog", "cup", "rocket", "helmet", "space shuttle", "tripod", "person", "flag", "spoon",
              "car", "horse", "bird", "laptop", "chair", "bottle", "clock", "banana", "book", "camera"]
NO_IMAGENET_COUNTERPART = {"person"}
# (image, name, xyxy box) drawn by hand on the scikit-image photographs.
OBJECTS = [
    ("chelsea", "cat", (0, 0, 430, 300)),
    ("coffee", "cup", (173, 17, 410, 305)),
    ("rocket", "rocket", (303, 125, 342, 410)),
    ("astronaut", "person", (20, 15, 365, 512)),
    ("astronaut", "helmet", (275, 343, 512, 512)),
    ("astronaut", "space shuttle", (355, 0, 470, 285)),
    ("camera", "tripod", (228, 180, 410, 512)),
    ("camera", "person", (0, 65, 330, 512)),
]
PASTE = ["cat", "cup", "helmet", "space shuttle", "tripod", "rocket"]  # cut out for the composites
BACKGROUNDS = ["grass", "gravel", "brick"]


def photo(name: str) -> np.ndarray:
    from skimage import data

    im = getattr(data, name)()
    return np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3]


def composites(n: int, seed: int = 0, size: tuple[int, int] = (480, 640)) -> list[tuple[np.ndarray, list]]:
    """`n` canvases, each with two pasted objects at known boxes (no overlap)."""
    rng = np.random.default_rng(seed)
    cut = {name: photo(img)[box[1]:box[3], box[0]:box[2]] for img, name, box in OBJECTS if name in PASTE}
    out = []
    for i in range(n):
        bg = Image.fromarray(photo(BACKGROUNDS[i % len(BACKGROUNDS)])).resize(size[::-1])
        canvas = np.array(bg)
        names = rng.choice(PASTE, size=2, replace=False)
        objects, taken = [], []
        for name in names:
            patch = cut[str(name)]
            for _ in range(100):
                scale = rng.uniform(0.35, 0.55) * min(size) / max(patch.shape[:2])
                h, w = max(8, int(patch.shape[0] * scale)), max(8, int(patch.shape[1] * scale))
                y, x = int(rng.integers(0, size[0] - h)), int(rng.integers(0, size[1] - w))
                box = (x, y, x + w, y + h)
                if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in taken):
                    break
            else:
                continue
            canvas[y:y + h, x:x + w] = np.array(Image.fromarray(patch).resize((w, h), Image.Resampling.BILINEAR))
            taken.append(box)
            objects.append((str(name), box))
        out.append((canvas, objects))
    return out


def scenes(n_composites: int) -> list[tuple[str, np.ndarray, list]]:
    by_image: dict[str, list] = {}
    for img, name, box in OBJECTS:
        by_image.setdefault(img, []).append((name, box))
    out = [(img, photo(img), objs) for img, objs in by_image.items()]
    out += [(f"composite{i}", im, objs) for i, (im, objs) in enumerate(composites(n_composites))]
    return out


def iou(a, b) -> float:
    from torchvision.ops import box_iou

    return float(box_iou(torch.tensor([a], dtype=torch.float), torch.tensor([b], dtype=torch.float))[0, 0])


def evaluate(predictor: Predictor, scene_list) -> dict:
    rows, latencies = [], []
    for scene, image, objects in scene_list:
        predictor.clear_cache()
        t = time.perf_counter()
        det = predictor.predict(image, VOCABULARY, score_threshold=0.0, max_detections=100)[0]
        latencies.append(time.perf_counter() - t)
        order = np.argsort(-det.confidence, kind="stable")
        names = [str(det["class_name"][i]) for i in order]
        ranked_names = list(dict.fromkeys(names))
        for name, box in objects:
            top10 = [i for i in order[:10] if det["class_name"][i] == name]
            own = [i for i in order if det["class_name"][i] == name]
            rows.append({
                "scene": scene, "name": name, "imagenet": name not in NO_IMAGENET_COUNTERPART,
                "name_rank": ranked_names.index(name) + 1 if name in ranked_names else None,
                "top3": name in ranked_names[:3],
                "recall@10": any(iou(det.xyxy[i], box) >= 0.5 for i in top10),
                "best_box_iou": iou(det.xyxy[own[0]], box) if own else 0.0,
                "best_box_score": float(det.confidence[own[0]]) if own else 0.0,
            })
    target = [r for r in rows if r["imagenet"]]

    def frac(key, cond=lambda v: bool(v)):
        return sum(cond(r[key]) for r in target) / max(len(target), 1)

    return {
        "objects": len(target),
        "top3": frac("top3"),
        "recall@10": frac("recall@10"),
        "best_box_iou>=0.5": frac("best_box_iou", lambda v: v >= 0.5),
        "mean_best_box_iou": float(np.mean([r["best_box_iou"] for r in target])),
        "median_latency_s": float(np.median(latencies)),
        "rows": rows,
    }


def cat_boxes(predictor: Predictor, scene_list) -> list[int]:
    """Boxes 'cat' gets at the model's default threshold on each scene without a cat."""
    out = []
    for _, image, objects in scene_list:
        if all(n != "cat" for n, _ in objects):
            out.append(len(predictor.predict(image, "cat")[0]))
    return out


def build(which: str, device: str) -> Predictor:
    cfg = PRESETS["offline"]
    if which == "before":
        cfg = cfg.replace(rpn_trained=True, region_scoring=False, part_suppression=0.0, region_top_k=100)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random heads as the preset loader
        return Predictor(OpenVocabDetector(cfg.replace()), device=device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--composites", type=int, default=9)
    ap.add_argument("--only", choices=["before", "after"], default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--verbose", action="store_true", help="print every object's row")
    args = ap.parse_args()
    scene_list = scenes(args.composites)
    results = {}
    for which in (["before", "after"] if args.only is None else [args.only]):
        predictor = build(which, args.device)
        res = evaluate(predictor, scene_list)
        res["cat_boxes_on_cat_free_images"] = cat_boxes(predictor, scene_list)
        results[which] = res
        print(f"{which:6s} objects={res['objects']} top3={res['top3']:.0%} recall@10={res['recall@10']:.0%} "
              f"best-box IoU>=0.5={res['best_box_iou>=0.5']:.0%} mean best-box IoU={res['mean_best_box_iou']:.2f} "
              f"median latency={res['median_latency_s']:.2f}s cat boxes on cat-free images="
              f"{res['cat_boxes_on_cat_free_images']}")
        if args.verbose:
            for r in res["rows"]:
                print(f"   {r['scene']:12s} {r['name']:14s} rank={r['name_rank']} top3={r['top3']!s:5s} "
                      f"R@10={r['recall@10']!s:5s} iou={r['best_box_iou']:.2f} score={r['best_box_score']:.2f}")
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev}; vocabulary: {len(VOCABULARY)} names; scenes: {len(scene_list)}")
    if args.json:
        args.json.write_text(json.dumps({"device": dev, **results}, indent=2))


if __name__ == "__main__":
    main()
