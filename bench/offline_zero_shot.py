"""Does the packaged offline model find real things before any training? Re-runnable, offline.

Images: real photographs that ship inside installed packages (scikit-image, gradio, scikit-learn,
matplotlib), each with boxes drawn by hand below (checked by drawing them on the photo), plus
synthetic composites: objects cut out by their boxes and pasted, resized, at seeded random
positions onto scikit-image textures (grass, gravel, brick), so their boxes are known exactly.
Two photos hold no nameable object (a film still, the Eiffel tower at night): they only count
boxes given to absent names.

The scenes are split once, here, into a **tune** half (the five scikit-image photos every earlier
setting was chosen on, plus lion, cheetah1, flower, groot, and composites of the tune half's
objects) and a **report** half (the other photos and composites of their objects). Settings are
chosen on the tune half only; both halves are reported separately.

Per object with an ImageNet counterpart ("person" has none), at the model's default threshold
(what the app shows) and over all boxes:
- shown: a box at or above the default threshold has the right name and IoU >= 0.5;
- top-3 name: the right name is among the 3 names with the highest-scoring box in the image;
- best-box IoU: IoU between the object and the highest-scoring box carrying its name (0 if none);
- proposal recall: some box (any name, before NMS) has IoU >= 0.5 with the object;
- ceiling: some box with IoU >= 0.5 scores the right name at or above the default threshold,
  before NMS and part suppression's choice: what "shown" could reach with these scores if the
  best-fitting box were always the one kept (recognition, not box choice, is what it bounds).
Per scene: boxes at or above the default threshold whose name is absent from the scene
(`ALSO_PRESENT` lists unboxed things that are there, e.g. the camera the cameraman holds).

"before" is the pre-issue-14 offline model (RPN proposals + random head, no region scores);
"after" is the `offline` preset (selective search + ImageNet region scores).

    python bench/offline_zero_shot.py [--half tune|report|both] [--only after] [--verbose] [--json out.json]
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
              "car", "horse", "bird", "laptop", "chair", "bottle", "clock", "banana", "book", "camera",
              "lion", "tiger", "cheetah", "pagoda", "motorcycle", "flower"]
NO_IMAGENET_COUNTERPART = {"person"}
# Where each photograph comes from: a scikit-image loader name or a file inside an installed package.
SOURCES = {
    "chelsea": "skimage:chelsea", "coffee": "skimage:coffee", "rocket": "skimage:rocket",
    "astronaut": "skimage:astronaut", "camera": "skimage:camera",
    "lion": "gradio/media_assets/images/lion.jpg", "cheetah1": "gradio/media_assets/images/cheetah1.jpg",
    "flower": "sklearn/datasets/images/flower.jpg", "groot": "gradio/media_assets/images/groot.jpeg",
    "cheetah": "gradio/media_assets/images/cheetah.jpg", "cheetah2": "gradio/test_data/cheetah2.jpg",
    "china": "sklearn/datasets/images/china.jpg", "hopper": "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
    "motorcycle": "skimage:motorcycle_left.png", "horse": "skimage:horse",
    "tower": "gradio/media_assets/images/tower.jpg",
}
# (image, name, xyxy box) drawn by hand on the photographs, in their own pixels.
OBJECTS = [
    ("chelsea", "cat", (0, 0, 430, 300)),
    ("coffee", "cup", (173, 17, 410, 305)),
    ("coffee", "spoon", (322, 65, 425, 326)),
    ("rocket", "rocket", (303, 125, 342, 410)),
    ("astronaut", "person", (20, 15, 365, 512)),
    ("astronaut", "helmet", (275, 343, 512, 512)),
    ("astronaut", "space shuttle", (355, 0, 470, 285)),
    ("camera", "tripod", (228, 180, 410, 512)),
    ("camera", "person", (0, 65, 330, 512)),
    ("lion", "lion", (0, 5, 205, 250)),
    ("lion", "lion", (172, 25, 256, 165)),
    ("cheetah1", "cheetah", (18, 28, 250, 256)),
    ("flower", "flower", (168, 85, 447, 360)),
    ("cheetah", "cheetah", (83, 117, 378, 237)),
    ("cheetah2", "cheetah", (30, 75, 728, 787)),
    ("china", "pagoda", (60, 28, 368, 398)),
    ("hopper", "flag", (0, 0, 215, 600)),
    ("hopper", "person", (25, 22, 512, 600)),
    ("motorcycle", "motorcycle", (92, 72, 686, 450)),
    ("horse", "horse", (18, 8, 390, 312)),
]
NO_OBJECT = ["groot", "tower"]  # nothing of the vocabulary in them
ALSO_PRESENT = {"astronaut": {"flag"}, "camera": {"camera"}, "flower": {"flower"}}  # there, not boxed
HALVES = {
    "tune": ["chelsea", "coffee", "rocket", "astronaut", "camera", "lion", "cheetah1", "flower", "groot"],
    "report": ["cheetah", "cheetah2", "china", "hopper", "motorcycle", "horse", "tower"],
}
# (image, name) cut out for each half's composites
PASTE = {"tune": [("chelsea", "cat"), ("coffee", "cup"), ("astronaut", "helmet"), ("astronaut", "space shuttle"),
                  ("camera", "tripod"), ("rocket", "rocket"), ("lion", "lion")],
         "report": [("cheetah", "cheetah"), ("china", "pagoda"), ("motorcycle", "motorcycle"), ("horse", "horse"),
                    ("cheetah2", "cheetah")]}
BACKGROUNDS = ["grass", "gravel", "brick"]


def photo(name: str) -> np.ndarray:
    """RGB uint8 array of a scene's photograph (or a scikit-image texture)."""
    source = SOURCES.get(name, f"skimage:{name}")
    if source.startswith("skimage:"):
        from skimage import data

        key = source.split(":", 1)[1]
        if key.endswith(".png"):
            im = np.array(Image.open(Path(data.__file__).parent / key))
        else:
            im = getattr(data, key)()
    else:
        import site

        roots = [Path(p) for p in site.getsitepackages()] + [Path(np.__file__).parents[1]]
        path = next((r / source for r in roots if (r / source).exists()), None)
        if path is None:
            raise FileNotFoundError(f"{source} (from an installed package) not found")
        im = np.array(Image.open(path).convert("RGB"))
    if im.dtype == bool:  # the horse silhouette
        im = im.astype(np.uint8) * 255
    if im.ndim == 2:
        return np.stack([im] * 3, -1)
    if im.shape[2] == 4:  # transparent background -> white
        alpha = im[..., 3:4].astype(np.float32) / 255
        return (im[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    return im[..., :3]


def composites(n: int, half: str = "tune", seed: int = 0, size: tuple[int, int] = (480, 640)) -> list:
    """`n` canvases, each with two pasted objects of `half` at known boxes (no overlap)."""
    rng = np.random.default_rng(seed)
    cut = {}
    for img, name, box in OBJECTS:
        if (img, name) in PASTE[half] and (img, name) not in cut:  # the first box of that name
            cut[img, name] = photo(img)[box[1]:box[3], box[0]:box[2]]
    out = []
    for i in range(n):
        bg = Image.fromarray(photo(BACKGROUNDS[i % len(BACKGROUNDS)])).resize(size[::-1])
        canvas = np.array(bg)
        picks = rng.choice(len(PASTE[half]), size=2, replace=False)
        objects, taken = [], []
        for k in picks:
            img, name = PASTE[half][int(k)]
            patch = cut[img, name]
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


def scenes(n_composites: int, half: str = "tune") -> list[tuple[str, np.ndarray, list]]:
    """(scene name, RGB array, [(name, box)]) for the photos and composites of `half`."""
    by_image: dict[str, list] = {img: [] for img in HALVES[half]}
    for img, name, box in OBJECTS:
        if img in by_image:
            by_image[img].append((name, box))
    out = [(img, photo(img), objs) for img, objs in by_image.items()]
    prefix = "composite" if half == "tune" else "r-composite"
    out += [(f"{prefix}{i}", im, objs) for i, (im, objs) in enumerate(composites(n_composites, half))]
    return out


def iou(a, b) -> float:
    from torchvision.ops import box_iou

    a, b = (torch.as_tensor(np.asarray(v, dtype=np.float32)).reshape(1, 4) for v in (a, b))
    return float(box_iou(a, b)[0, 0])


def evaluate(predictor: Predictor, scene_list) -> dict:
    threshold = predictor.config.score_threshold
    rows, latencies, absent = [], [], []
    for scene, image, objects in scene_list:
        predictor.clear_cache()
        t = time.perf_counter()
        det = predictor.predict(image, VOCABULARY, score_threshold=0.0, max_detections=100)[0]
        latencies.append(time.perf_counter() - t)
        shown = predictor.predict(image, VOCABULARY)[0]  # the app's defaults (cached encoding)
        every = predictor.predict(image, VOCABULARY, score_threshold=0.0, nms_threshold=1.0, max_detections=100_000)[0]
        present = {n for n, _ in objects} | ALSO_PRESENT.get(scene, set())
        absent.append(sorted(f"{n} {c:.2f}" for n, c in zip(shown["class_name"], shown.confidence)
                             if n not in present))
        order = np.argsort(-det.confidence, kind="stable")
        ranked_names = list(dict.fromkeys(str(det["class_name"][i]) for i in order))
        for name, box in objects:
            own = [i for i in order if det["class_name"][i] == name]
            rows.append({
                "scene": scene, "name": name, "imagenet": name not in NO_IMAGENET_COUNTERPART,
                "name_rank": ranked_names.index(name) + 1 if name in ranked_names else None,
                "top3": name in ranked_names[:3],
                "shown": any(n == name and iou(b, box) >= 0.5 for n, b in zip(shown["class_name"], shown.xyxy)),
                "best_box_iou": iou(det.xyxy[own[0]], box) if own else 0.0,
                "best_box_score": float(det.confidence[own[0]]) if own else 0.0,
                "proposal_recall": any(iou(b, box) >= 0.5 for b in every.xyxy),
                "ceiling": any(n == name and c >= threshold and iou(b, box) >= 0.5
                               for n, c, b in zip(every["class_name"], every.confidence, every.xyxy)),
            })
    target = [r for r in rows if r["imagenet"]]

    def frac(key, cond=lambda v: bool(v)):
        return sum(cond(r[key]) for r in target) / max(len(target), 1)

    return {
        "objects": len(target),
        "scenes": len(scene_list),
        "threshold": threshold,
        "shown": frac("shown"),
        "top3": frac("top3"),
        "best_box_iou>=0.5": frac("best_box_iou", lambda v: v >= 0.5),
        "mean_best_box_iou": float(np.mean([r["best_box_iou"] for r in target])),
        "proposal_recall": frac("proposal_recall"),
        "ceiling": frac("ceiling"),
        "absent_boxes": sum(len(a) for a in absent),
        "absent_per_5_scenes": 5 * sum(len(a) for a in absent) / max(len(scene_list), 1),
        "absent": {s[0]: a for s, a in zip(scene_list, absent) if a},
        "median_latency_s": float(np.median(latencies)),
        "rows": rows,
    }


def report(which: str, half: str, res: dict, verbose: bool) -> None:
    print(f"{which:6s} {half:6s} objects={res['objects']} scenes={res['scenes']} "
          f"shown (name + IoU>=0.5 at {res['threshold']:.2f})={res['shown']:.0%} top3={res['top3']:.0%} "
          f"best-box IoU>=0.5={res['best_box_iou>=0.5']:.0%} mean best-box IoU={res['mean_best_box_iou']:.2f} "
          f"absent-name boxes={res['absent_boxes']} ({res['absent_per_5_scenes']:.1f} per 5 scenes) "
          f"median latency={res['median_latency_s']:.2f}s proposal recall={res['proposal_recall']:.0%} "
          f"ceiling={res['ceiling']:.0%}")
    if verbose:
        for r in res["rows"]:
            print(f"   {r['scene']:14s} {r['name']:14s} rank={r['name_rank']} top3={r['top3']!s:5s} "
                  f"shown={r['shown']!s:5s} iou={r['best_box_iou']:.2f} score={r['best_box_score']:.2f} "
                  f"ceiling={r['ceiling']!s:5s}")
        for scene, boxes in res["absent"].items():
            print(f"   absent-name boxes on {scene}: {', '.join(boxes)}")


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
    ap.add_argument("--composites", type=int, default=8, help="composites per half")
    ap.add_argument("--half", choices=["tune", "report", "both"], default="both")
    ap.add_argument("--only", choices=["before", "after"], default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--verbose", action="store_true", help="print every object's row")
    args = ap.parse_args()
    halves = ["tune", "report"] if args.half == "both" else [args.half]
    scene_lists = {half: scenes(args.composites, half) for half in halves}
    results: dict = {}
    for which in (["before", "after"] if args.only is None else [args.only]):
        predictor = build(which, args.device)
        for half in halves:
            res = evaluate(predictor, scene_lists[half])
            results.setdefault(which, {})[half] = res
            report(which, half, res, args.verbose)
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev}; vocabulary: {len(VOCABULARY)} names; "
          + "; ".join(f"{h}: {len(s)} scenes" for h, s in scene_lists.items()))
    if args.json:
        args.json.write_text(json.dumps({"device": dev, **results}, indent=2))


if __name__ == "__main__":
    main()
