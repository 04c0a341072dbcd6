"""The product's core loop on real photographs: tag images, one click retrains, the better model is served.

A person tags images with image-level tags only (present / known absent), presses "Start
training" with the Train tab's defaults, and serves the run's model. This benchmark does exactly
that through the app's own service (`app.service.AppService`, the one the UI and the API call) in a
temporary data folder, and measures box AP50 on held-out scenes before (the model served before
training) and after (the model served after `use_model`).

Photographs (all ship inside packages that `requirements*.txt` installs; nothing is downloaded):
- scikit-image `skimage/data/`: astronaut, camera, chelsea, coffee, rocket, coins; textures
  grass, gravel, brick;
- gradio `gradio/media_assets/images/`: cheetah.jpg, cheetah1.jpg, lion.jpg, tower.jpg;
  `gradio/test_data/cheetah2.jpg`;
- matplotlib (a dependency of supervision) `mpl-data/sample_data/grace_hopper.jpg`;
- scikit-learn (a dependency of sentence-transformers) `datasets/images/china.jpg`, `flower.jpg`.

Scenes: objects cut out of those photos by hand-drawn boxes (`CUTOUTS`; each box was drawn on a
pixel grid and the crop looked at; the coin boxes come from a watershed segmentation of
`coins.png`, checked the same way), pasted, resized and possibly mirrored, at seeded random
non-overlapping positions onto a seeded window of a real background (`BACKGROUNDS`: regions of the
photos above that hold none of the names, or the scikit-image textures). The pasted rectangle is
the object's box, so boxes are exact. A cut-out may hold more than one box (two coins, two lions)
and may show part of another named thing that is no object of it (the flag behind Grace Hopper):
that part is neither tagged (present or absent) nor scored (a COCO crowd region: detections there
are ignored). Everything is deterministic per seed.

Names (`NOVEL`, `BASE`): base names are ones the packaged offline model already recognises (each
matches an ImageNet-1k class of the same thing through its MiniLM text embedding with match weight
a >= 0.8, `detector.imagenet_scorer.match_weights`: cat 0.95, cup 0.93, rocket -> missile 0.82,
helmet 0.97, space shuttle 0.93, tripod 0.86, cheetah 0.94, lion 0.89); novel names have no ImageNet-1k counterpart
(their best match is weak or a different thing: person -> ballplayer 0.19, flag -> flagpole 0.41,
coin -> piggy bank 0.72, dahlia -> daisy 0.10, pagoda -> stupa 0.67, eiffel tower -> water
tower 0.31). The split was fixed from those text matches before any image was scored.

Splits, per seed:
- `tagged`: scenes added to the store and tagged (1-2 objects, object-centric like photos a person
  tags); positives = the names in the scene, negatives = every other name of the vocabulary (all
  known absent: the scene was built);
- `heldout`: new scenes (new positions, scales, combinations, background windows) from the same
  cut-outs and backgrounds, never added to the store (2-3 objects);
- `unseen`: scenes built only from photos/objects and backgrounds held out of every choice made
  while writing this benchmark and of every tagged scene (Grace Hopper's person and flag, the
  bottom row of coins, cheetah2; the brick texture, a wooden table, a night sky). Reported
  separately; no scale, threshold or name was chosen by looking at them.

Box AP50 per name: pycocotools COCOeval ("bbox", its precision at IoU 0.5, all areas, 100
detections), the vocabulary = all names at once (as a person types them), score threshold 0,
at most 100 detections per image. Novel / base AP50 = mean over the names of that kind with a
box in the split. Image-level AP: the run's own held-out report (`training_status(run)["heldout"]`)
when the app has one, else "no held-out report".

Targets (printed per seed): novel box AP50 >= 1.5x before (and above it) and the image-level AP
up; base box AP50 at most 1 point below before; train + serve <= 5 minutes.

    python bench/loop_real.py [--seeds 0 1 2] [--model offline] [--device cpu] [--json out.json]
    python bench/loop_real.py --smoke           # tiny model, 2 iterations, few scenes (~1 min on CPU)
    python bench/loop_real.py --preview sheet.png   # the cut-outs and some scenes with their boxes
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# --- the photographs ------------------------------------------------------------------------------
# name -> (package, path inside it); located without importing the package.
PHOTOS = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "camera": ("skimage", "data/camera.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "coins": ("skimage", "data/coins.png"),
    "grass": ("skimage", "data/grass.png"),
    "gravel": ("skimage", "data/gravel.png"),
    "brick": ("skimage", "data/brick.png"),
    "cheetah": ("gradio", "media_assets/images/cheetah.jpg"),
    "cheetah1": ("gradio", "media_assets/images/cheetah1.jpg"),
    "lion": ("gradio", "media_assets/images/lion.jpg"),
    "tower": ("gradio", "media_assets/images/tower.jpg"),
    "cheetah2": ("gradio", "test_data/cheetah2.jpg"),
    "hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
}

NOVEL = ["person", "flag", "coin", "dahlia", "pagoda", "eiffel tower"]
BASE = ["cat", "cup", "rocket", "helmet", "space shuttle", "tripod", "cheetah", "lion"]
VOCABULARY = NOVEL + BASE

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in the photo's pixels


@dataclass(frozen=True)
class Cutout:
    """A rectangle `crop` of `photo`, pasted whole; `objects` its named boxes (inside the crop),
    `partial` named things that show in part and are neither tagged nor scored."""

    photo: str
    crop: Box
    objects: tuple[tuple[str, Box], ...]
    partial: tuple[tuple[str, Box], ...] = ()
    unseen: bool = False  # held out of every choice and every tagged scene


def _one(photo: str, name: str, box: Box, **kw) -> Cutout:
    return Cutout(photo, box, ((name, box),), **kw)


def _coin_pair(a: Box, b: Box, unseen: bool = False) -> Cutout:
    m = 6  # a little table around the two coins
    crop = (max(0, min(a[0], b[0]) - m), max(0, min(a[1], b[1]) - m), min(384, max(a[2], b[2]) + m),
            min(303, max(a[3], b[3]) + m))
    return Cutout("coins", crop, (("coin", a), ("coin", b)), unseen=unseen)


# coins.png, rows top to bottom, each left to right (watershed boxes, checked by eye).
COIN_ROWS = [
    [(22, 35, 67, 74), (81, 39, 120, 74), (132, 28, 179, 74), (192, 30, 240, 73), (255, 34, 297, 72), (305, 16, 365, 72)],
    [(25, 104, 67, 145), (84, 108, 122, 145), (134, 110, 173, 145), (186, 105, 226, 144), (245, 95, 296, 144),
     (317, 106, 356, 145)],
    [(26, 179, 63, 217), (80, 175, 124, 217), (135, 179, 174, 217), (189, 170, 237, 217), (251, 172, 297, 217),
     (315, 156, 380, 218)],
    [(18, 233, 75, 288), (93, 245, 136, 287), (144, 236, 201, 288), (220, 240, 269, 288), (276, 239, 326, 289),
     (336, 248, 382, 289)],
]

CUTOUTS = [
    # novel
    _one("astronaut", "person", (95, 10, 275, 512)),  # truncated left of the flag, right of the helmet
    _one("camera", "person", (0, 62, 235, 512)),  # truncated at the hands (camera and tripod left out)
    _one("astronaut", "flag", (0, 0, 85, 235)),
    *[_coin_pair(row[i], row[i + 1]) for row in COIN_ROWS[:3] for i in (0, 2, 4)],
    _one("flower", "dahlia", (168, 85, 447, 360)),
    _one("china", "pagoda", (60, 28, 372, 392)),
    _one("tower", "eiffel tower", (30, 55, 377, 600)),  # tree branches in the top right corner
    # base
    _one("chelsea", "cat", (0, 0, 430, 300)),
    _one("coffee", "cup", (173, 17, 410, 305)),  # with the spoon in front and a bit of saucer
    _one("rocket", "rocket", (300, 125, 345, 410)),
    _one("astronaut", "helmet", (275, 343, 512, 512)),
    _one("astronaut", "space shuttle", (355, 0, 470, 285)),
    _one("camera", "tripod", (230, 305, 410, 512)),  # below the tripod head: no hands, no coat
    _one("cheetah", "cheetah", (83, 118, 378, 236)),
    _one("cheetah1", "cheetah", (0, 0, 256, 256)),
    Cutout("lion", (0, 0, 256, 256), (("lion", (0, 3, 190, 250)), ("lion", (150, 25, 256, 170)))),
    # unseen: held out of every choice and of every tagged scene
    Cutout("hopper", (25, 22, 512, 600), (("person", (25, 22, 512, 600)),), partial=(("flag", (25, 22, 150, 340)),),
           unseen=True),
    _one("hopper", "flag", (0, 0, 150, 335), unseen=True),
    *[_coin_pair(COIN_ROWS[3][i], COIN_ROWS[3][i + 1], unseen=True) for i in (0, 2, 4)],
    _one("cheetah2", "cheetah", (28, 75, 725, 787), unseen=True),
]

# (photo, region or None for the whole photo, unseen): regions that hold none of the names.
BACKGROUNDS = [
    ("grass", None, False),
    ("gravel", None, False),
    ("cheetah", (0, 0, 502, 100), False),  # motion-blurred savanna above the running cheetah
    ("flower", (0, 0, 165, 427), False),  # out-of-focus leaves left of the dahlia
    ("china", (390, 290, 640, 427), False),  # trees right of the pagoda
    ("brick", None, True),
    ("coffee", (490, 0, 600, 400), True),  # the wooden table right of the saucer
    ("rocket", (90, 0, 290, 115), True),  # night sky between the launch towers
]


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"bench/loop_real.py needs the '{package}' package (its bundled photographs)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise RuntimeError(f"photograph missing from the installed '{package}': {path}")
    return path


@cache
def photo(name: str) -> np.ndarray:
    """The photograph as RGB uint8 (grey ones repeated over three channels), read-only (shared)."""
    im = np.array(Image.open(_package_file(*PHOTOS[name])).convert("RGB"))
    im.setflags(write=False)
    return im


# --- scenes ---------------------------------------------------------------------------------------
@dataclass
class Scene:
    name: str
    image: np.ndarray  # H x W x 3 uint8
    objects: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)  # (name, xyxy)
    partial: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)
    sources: list[Cutout] = field(default_factory=list)  # the cut-outs pasted

    @property
    def names(self) -> list[str]:
        return sorted({n for n, _ in self.objects})

    def tags(self, vocabulary: list[str] = VOCABULARY) -> tuple[list[str], list[str]]:
        """(positives, negatives) a person would give: the names present, and every other name of
        the vocabulary (known absent) except those that show in part."""
        present, partial = set(self.names), {n for n, _ in self.partial}
        return ([n for n in vocabulary if n in present],
                [n for n in vocabulary if n not in present and n not in partial])


def _background(rng: np.random.Generator, unseen: bool, size: tuple[int, int]) -> np.ndarray:
    choices = [b for b in BACKGROUNDS if b[2] == unseen]
    name, region, _ = choices[int(rng.integers(len(choices)))]
    im = photo(name)
    if region:
        im = im[region[1]:region[3], region[0]:region[2]]
    h, w = size
    ih, iw = im.shape[:2]
    # a window of the canvas' aspect covering 60-100 % of the region's limiting side
    frac = rng.uniform(0.6, 1.0)
    wh = min(ih, iw * h / w) * frac
    ww = wh * w / h
    y, x = rng.uniform(0, ih - wh), rng.uniform(0, iw - ww)
    window = Image.fromarray(im).crop((x, y, x + ww, y + wh))
    if rng.random() < 0.5:
        window = window.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.array(window.resize((w, h), Image.Resampling.BILINEAR))


def _paste(rng, canvas: np.ndarray, cut: Cutout, taken: list, scale: tuple[float, float]):
    """Paste `cut` at a random free place; -> (objects, partial) in canvas pixels, or None."""
    ch, cw = canvas.shape[:2]
    x1c, y1c, x2c, y2c = cut.crop
    pw, ph = x2c - x1c, y2c - y1c
    for attempt in range(60):
        s = rng.uniform(*scale) * min(ch, cw) / max(pw, ph) * (0.97 ** attempt)  # shrink when crowded
        w, h = max(12, round(pw * s)), max(12, round(ph * s))
        if w >= cw or h >= ch:
            continue
        x, y = int(rng.integers(0, cw - w + 1)), int(rng.integers(0, ch - h + 1))
        if all(x + w <= b[0] or b[2] <= x or y + h <= b[1] or b[3] <= y for b in taken):
            break
    else:
        return None
    flip = bool(rng.random() < 0.5)
    patch = Image.fromarray(photo(cut.photo)).crop(cut.crop)
    if flip:
        patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    canvas[y:y + h, x:x + w] = np.array(patch.resize((w, h), Image.Resampling.BILINEAR))
    taken.append((x, y, x + w, y + h))
    sx, sy = w / pw, h / ph

    def place(box: Box) -> tuple[float, float, float, float]:
        bx1, by1, bx2, by2 = box[0] - x1c, box[1] - y1c, box[2] - x1c, box[3] - y1c
        if flip:
            bx1, bx2 = pw - bx2, pw - bx1
        return (x + bx1 * sx, y + by1 * sy, x + bx2 * sx, y + by2 * sy)

    return [(n, place(b)) for n, b in cut.objects], [(n, place(b)) for n, b in cut.partial]


def _scene(rng, name: str, first: Cutout, pool: list[Cutout], n_objects: int, unseen: bool,
           size: tuple[int, int], scale: tuple[float, float]) -> Scene:
    canvas = _background(rng, unseen, size)
    scene = Scene(name, canvas)
    taken: list = []
    cuts = [first]
    for _ in range(n_objects - 1):  # others of different names than those already in the scene
        have = {n for c in cuts for n, _ in c.objects}
        others = [c for c in pool if not {n for n, _ in c.objects} & have]
        if others:
            cuts.append(others[int(rng.integers(len(others)))])
    for cut in cuts:
        placed = _paste(rng, canvas, cut, taken, scale)
        if placed:
            scene.objects += placed[0]
            scene.partial += placed[1]
            scene.sources.append(cut)
    return scene


def build_scenes(seed: int, tagged: int = 56, heldout: int = 28, unseen: int = 14,
                 size: tuple[int, int] = (480, 640)) -> dict[str, list[Scene]]:
    """{"tagged", "heldout", "unseen": [Scene]}, deterministic per seed. Every name leads in turn
    (its cut-outs in a seeded order), so names are balanced; `unseen` scenes hold only unseen
    cut-outs on unseen backgrounds."""
    rng = np.random.default_rng([seed, 19])
    seen_pool = [c for c in CUTOUTS if not c.unseen]
    unseen_pool = [c for c in CUTOUTS if c.unseen]
    out: dict[str, list[Scene]] = {}
    for split, n, pool, objects, scale in (("tagged", tagged, seen_pool, (1, 2), (0.35, 0.75)),
                                           ("heldout", heldout, seen_pool, (2, 3), (0.3, 0.6)),
                                           ("unseen", unseen, unseen_pool, (1, 2), (0.35, 0.7))):
        names = sorted({n for c in pool for n, _ in c.objects})
        order = [names[i] for i in rng.permutation(len(names))]
        scenes = []
        for i in range(n):
            lead = order[i % len(order)]
            candidates = [c for c in pool if any(n == lead for n, _ in c.objects)]
            first = candidates[int(rng.integers(len(candidates)))]
            k = int(rng.integers(objects[0], objects[1] + 1))
            scenes.append(_scene(rng, f"{split}_{seed}_{i:03d}", first, pool, k, split == "unseen", size, scale))
        out[split] = scenes
    return out


# --- scoring --------------------------------------------------------------------------------------
def detect(predictor, scenes: list[Scene], vocabulary: list[str] = VOCABULARY) -> list:
    """The served model's detections on each scene (cache cleared: every model sees every pixel)."""
    predictor.clear_cache()
    return [predictor.predict(s.image, vocabulary, score_threshold=0.0, max_detections=100)[0] for s in scenes]


def box_ap50(scenes: list[Scene], detections: list, vocabulary: list[str] = VOCABULARY) -> dict[str, float]:
    """{name: box AP50} for the names with a box in `scenes` (pycocotools COCOeval, IoU 0.5, all
    areas, 100 detections); a name that shows in part is a crowd region (detections there ignored)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cat = {n: i + 1 for i, n in enumerate(vocabulary)}
    images, anns, dets = [], [], []

    def ann(image_id, name, box, crowd):
        x1, y1, x2, y2 = box
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat[name], "iscrowd": int(crowd),
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})

    for i, (scene, det) in enumerate(zip(scenes, detections), 1):
        h, w = scene.image.shape[:2]
        images.append({"id": i, "width": w, "height": h})
        for name, box in scene.objects:
            ann(i, name, box, False)
        for name, box in scene.partial:
            ann(i, name, box, True)
        for box, score, name in zip(det.xyxy, det.confidence, det.data["class_name"]):
            x1, y1, x2, y2 = (float(v) for v in box)
            dets.append({"image_id": i, "category_id": cat[str(name)], "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": float(score)})
    with_box = sorted({a["category_id"] for a in anns if not a["iscrowd"]})
    names = {v: k for k, v in cat.items()}
    if not dets:
        return {names[c]: 0.0 for c in with_box}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": v, "name": k} for k, v in cat.items()]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.catIds = with_box
        ev.evaluate()
        ev.accumulate()
    out = {}
    for k, c in enumerate(ev.params.catIds):
        p = ev.eval["precision"][0, :, k, 0, -1]  # IoU 0.5, all recall points, area "all", 100 detections
        out[names[c]] = float(p[p > -1].mean()) if (p > -1).any() else 0.0
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(ap: dict[str, float]) -> dict:
    return {"novel": _mean(ap.get(n) for n in NOVEL), "base": _mean(ap.get(n) for n in BASE), "per_name": ap}


# --- the loop -------------------------------------------------------------------------------------
def _write(scenes: list[Scene], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in scenes:
        paths.append(folder / f"{s.name}.png")
        Image.fromarray(s.image).save(paths[-1])
    return paths


def _use(service, run_id: str) -> dict:
    """`use_model(run_id, confirm=True)` where the service takes `confirm` (the best checkpoint),
    today's `use_model(run_id)` otherwise."""
    if "confirm" in inspect.signature(service.use_model).parameters:
        return service.use_model(run_id, confirm=True)
    return service.use_model(run_id)


def _wait(service, run_id: str, timeout: float, poll: float = 2.0) -> dict:
    from train.run_dir import ACTIVE_STATES

    t0, last = time.time(), -1
    while True:
        status = service.training_status(run_id)
        if status.get("state") not in ACTIVE_STATES:
            return status
        it = int(status.get("iteration") or 0)
        if it != last and (it - last >= max(1, int(status.get("total") or 1) // 10)):
            print(f"    iteration {it} / {status.get('total')} · {status.get('message', '')}", flush=True)
            last = it
        if time.time() - t0 > timeout:
            service.cancel_training(run_id)
            print(f"    over {timeout:.0f} s: cancelled", flush=True)
            service.jobs.wait(run_id, timeout=600)  # it stops after the current step
            return service.training_status(run_id)
        time.sleep(poll)


def image_level(heldout: dict | None) -> dict | None:
    """The run's held-out image-level AP, as reported, with novel / base means added."""
    if not heldout:
        return None
    labels = heldout.get("labels") or {}

    def mean(names, key):
        return _mean(labels[n].get(key) for n in names if n in labels)

    return {"images": heldout.get("images"), "mean_before": heldout.get("mean_before"),
            "mean_after": heldout.get("mean_after"), "novel_before": mean(NOVEL, "before"),
            "novel_after": mean(NOVEL, "after"), "base_before": mean(BASE, "before"), "base_after": mean(BASE, "after"),
            "best_iteration": heldout.get("best_iteration"), "note": heldout.get("note"), "labels": labels}


def targets(result: dict, minutes: float = 5.0) -> dict:
    """Each target: True / False, or None when it cannot be judged (a missing report or phase)."""
    before, after = result["before"]["heldout"], (result.get("after") or {}).get("heldout")
    out = {}
    if after is None:
        out["novel_ap50_x1.5"] = out["base_ap50_within_1pt"] = None
    else:
        nb, na = before["novel"] or 0.0, after["novel"] or 0.0
        out["novel_ap50_x1.5"] = na >= 1.5 * nb and na > nb
        out["base_ap50_within_1pt"] = (after["base"] or 0.0) >= (before["base"] or 0.0) - 0.01
    il = result.get("image_level")
    out["image_ap_up"] = (il["mean_after"] > il["mean_before"]) if il and il.get("mean_after") is not None \
        and il.get("mean_before") is not None else None
    out["train_and_serve_le_5min"] = result["seconds"]["train"] + result["seconds"].get("use", 0.0) <= minutes * 60 \
        if result["state"] == "finished" else False
    return out


def run_seed(seed: int, args, work: Path) -> dict:
    from app.service import AppService

    seconds = {}
    t = time.perf_counter()
    scenes = build_scenes(seed, args.scenes, args.heldout, args.unseen)
    paths = _write(scenes["tagged"], work / "upload")
    seconds["scenes"] = time.perf_counter() - t

    t = time.perf_counter()
    service = AppService(data_dir=work / "data", model=args.model, device=args.device)
    seconds["load"] = time.perf_counter() - t
    print(f"  seed {seed}: serving {service.model_info()['source']} ({service.serving.note})", flush=True)

    t = time.perf_counter()
    added = service.add_images([str(p) for p in paths])
    if len(added["added"]) != len(paths) or added["skipped"]:
        raise RuntimeError(f"the store did not take every scene: {added}")
    for h, scene in zip(added["added"], scenes["tagged"]):
        positives, negatives = scene.tags()
        service.tag(h, positives, negatives)
    seconds["tag"] = time.perf_counter() - t

    t = time.perf_counter()
    before = {split: summarise(box_ap50(scenes[split], detect(service.predictor, scenes[split])))
              for split in ("heldout", "unseen")}
    seconds["before"] = time.perf_counter() - t

    t = time.perf_counter()
    run_id = service.start_training(**({"iters": args.iters} if args.iters else {}))
    status = _wait(service, run_id, args.timeout)
    seconds["train"] = time.perf_counter() - t
    state = status.get("state")
    print(f"  seed {seed}: run {run_id} {state} after {seconds['train']:.0f} s "
          f"(iteration {status.get('iteration')} of {status.get('total')})", flush=True)
    heldout_report = status.get("heldout")
    if heldout_report is None:
        print("  no held-out report", flush=True)
    else:
        print(f"  held-out report: {heldout_report.get('images')} images, image-level AP "
              f"{_pct(heldout_report.get('mean_before'))} -> {_pct(heldout_report.get('mean_after'))} "
              f"(best iteration {heldout_report.get('best_iteration')}) {heldout_report.get('note') or ''}", flush=True)

    result = {"seed": seed, "run": run_id, "state": state, "iterations": status.get("total"),
              "scenes": {k: len(v) for k, v in scenes.items()}, "before": before, "after": None,
              "image_level": image_level(heldout_report), "seconds": seconds}
    if state == "finished":
        t = time.perf_counter()
        info = _use(service, run_id)
        seconds["use"] = time.perf_counter() - t
        result["served_after"] = {"source": info.get("source"), "note": info.get("note")}
        t = time.perf_counter()
        result["after"] = {split: summarise(box_ap50(scenes[split], detect(service.predictor, scenes[split])))
                           for split in ("heldout", "unseen")}
        seconds["after"] = time.perf_counter() - t
    else:
        result["log"] = status.get("log", "")[-2000:]
        print(status.get("log", "")[-2000:], flush=True)
    result["targets"] = targets(result)
    return result


# --- report ---------------------------------------------------------------------------------------
def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _ok(v) -> str:
    return "n/a" if v is None else ("met" if v else "NOT met")


def markdown(results: list[dict], device: str, model: str) -> str:
    lines = [f"model `{model}`, device {device}, Train tab defaults"
             + (f" except iters={results[0]['iterations']}" if results and results[0].get("iters_flag") else ""), "",
             "| seed | split | novel AP50 before → after | base AP50 before → after | image-level AP before → after |"
             " train + serve (s) | total (s) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        il = r.get("image_level") or {}
        for split in ("heldout", "unseen"):
            b, a = r["before"][split], (r.get("after") or {}).get(split) or {}
            img = f"{_pct(il.get('mean_before'))} → {_pct(il.get('mean_after'))}" if split == "heldout" and il \
                else ("no held-out report" if split == "heldout" else "")
            s = r["seconds"]
            lines.append(f"| {r['seed']} | {split} | {_pct(b['novel'])} → {_pct(a.get('novel'))} | "
                         f"{_pct(b['base'])} → {_pct(a.get('base'))} | {img} | "
                         f"{s['train'] + s.get('use', 0):.0f} | {sum(s.values()):.0f} |")
    lines += ["", "Per name, box AP50 before → after (mean over seeds):", "",
              "| name | kind | heldout | unseen |", "|---|---|---|---|"]
    for name in VOCABULARY:
        cells = []
        for split in ("heldout", "unseen"):
            b = _mean(r["before"][split]["per_name"].get(name) for r in results)
            a = _mean(((r.get("after") or {}).get(split) or {}).get("per_name", {}).get(name) for r in results)
            cells.append("" if b is None else f"{_pct(b)} → {_pct(a)}")
        lines.append(f"| {name} | {'novel' if name in NOVEL else 'base'} | {cells[0]} | {cells[1]} |")
    lines += ["", "Per name, held-out image-level AP before → after (the run's report, mean over seeds):", ""]
    if any(r.get("image_level") for r in results):
        lines += ["| name | kind | before → after |", "|---|---|---|"]
        for name in VOCABULARY:
            b = _mean(((r.get("image_level") or {}).get("labels", {}).get(name) or {}).get("before") for r in results)
            a = _mean(((r.get("image_level") or {}).get("labels", {}).get(name) or {}).get("after") for r in results)
            lines.append(f"| {name} | {'novel' if name in NOVEL else 'base'} | {_pct(b)} → {_pct(a)} |")
    else:
        lines.append("no held-out report")
    lines += ["", "Wall time per phase (s): " + "; ".join(
        f"seed {r['seed']}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items()) for r in results), "",
        "Targets (box AP50 on `heldout` scenes; image-level AP from the run's report):", ""]
    for r in results:
        lines.append(f"- seed {r['seed']}: " + ", ".join(f"{k} {_ok(v)}" for k, v in r["targets"].items()))
    every = {k: [r["targets"][k] for r in results] for k in (results[0]["targets"] if results else {})}
    lines.append("- every seed: " + ", ".join(
        f"{k} {_ok(None if any(v is None for v in vs) else all(vs))}" for k, vs in every.items()))
    return "\n".join(lines)


def preview(path: Path, seed: int = 0) -> None:
    """A contact sheet: every cut-out with its boxes (magenta; partial ones cyan), then a few
    scenes of each split with theirs, for checking the boxes by eye."""
    from PIL import ImageDraw

    tiles = []
    for c in CUTOUTS:
        im = Image.fromarray(photo(c.photo)).crop(c.crop)
        d = ImageDraw.Draw(im)
        for boxes, colour in ((c.objects, (255, 0, 255)), (c.partial, (0, 255, 255))):
            for _, b in boxes:
                d.rectangle((b[0] - c.crop[0], b[1] - c.crop[1], b[2] - c.crop[0] - 1, b[3] - c.crop[1] - 1),
                            outline=colour, width=3)
        tiles.append((f"{c.photo}: {', '.join(n for n, _ in c.objects)}{' (unseen)' if c.unseen else ''}", im))
    scenes = build_scenes(seed, 4, 4, 4)
    for split, items in scenes.items():
        for s in items:
            im = Image.fromarray(s.image)
            d = ImageDraw.Draw(im)
            for boxes, colour in ((s.objects, (255, 0, 255)), (s.partial, (0, 255, 255))):
                for n, b in boxes:
                    d.rectangle(b, outline=colour, width=3)
                    d.text((b[0] + 4, b[1] + 4), n, fill=colour)
            pos, neg = s.tags()
            tiles.append((f"{split}: +{','.join(pos)}", im))
    side, cols = 260, 6
    sheet = Image.new("RGB", (cols * side, ((len(tiles) + cols - 1) // cols) * (side + 16)), "white")
    d = ImageDraw.Draw(sheet)
    for i, (title, im) in enumerate(tiles):
        im.thumbnail((side - 4, side - 4))
        x, y = (i % cols) * side, (i // cols) * (side + 16)
        sheet.paste(im, (x, y + 16))
        d.text((x + 2, y + 2), title[:44], fill="black")
    sheet.save(path)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--model", default=None, help="what the app serves before training (default: offline; "
                                                   "tiny with --smoke)")
    ap.add_argument("--device", default=None, help="cpu, cuda … (default: the app's: cuda when available)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--scenes", type=int, default=None, help="tagged scenes per seed (default 56; 6 with --smoke)")
    ap.add_argument("--heldout", type=int, default=None, help="held-out scenes per seed (default 28; 3 with --smoke)")
    ap.add_argument("--unseen", type=int, default=None, help="unseen-photo scenes per seed (default 14; 2 with --smoke)")
    ap.add_argument("--iters", type=int, default=None, help="training iterations (default: the Train tab's; 2 "
                                                            "with --smoke)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before a run is cancelled")
    ap.add_argument("--smoke", action="store_true", help="tiny preset, 2 iterations, few scenes: checks the path")
    ap.add_argument("--keep", type=Path, default=None, help="keep each seed's data folder under this folder")
    ap.add_argument("--preview", type=Path, default=None, help="write a contact sheet of the boxes and stop")
    args = ap.parse_args(argv)
    if args.preview:
        preview(args.preview, args.seeds[0])
        return []
    smoke = {"model": "tiny", "scenes": 6, "heldout": 3, "unseen": 2, "iters": 2}
    full = {"model": "offline", "scenes": 56, "heldout": 28, "unseen": 14, "iters": None}
    for k, v in (smoke if args.smoke else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shown = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    results = []
    for seed in args.seeds:
        work = Path(tempfile.mkdtemp(prefix=f"loop-real-{seed}-"))
        try:
            result = run_seed(seed, args, work)
            result["iters_flag"] = args.iters is not None
            results.append(result)
        finally:
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copytree(work, args.keep / f"seed{seed}", dirs_exist_ok=True)
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(markdown(results, shown, args.model))
    if len(results) > 1:
        for split in ("heldout", "unseen"):
            for kind in ("novel", "base"):
                b = [r["before"][split][kind] for r in results if r["before"][split][kind] is not None]
                a = [r["after"][split][kind] for r in results if r.get("after") and r["after"][split][kind] is not None]
                if a:
                    print(f"{split} {kind} AP50: before {100 * np.mean(b):.1f}, after {100 * np.mean(a):.1f} "
                          f"± {100 * (statistics.stdev(a) if len(a) > 1 else 0):.1f} over {len(a)} seeds")
    if args.json:
        args.json.write_text(json.dumps({"device": shown, "model": args.model, "smoke": args.smoke,
                                         "vocabulary": {"novel": NOVEL, "base": BASE}, "results": results},
                                        indent=2, default=float))
    return results


if __name__ == "__main__":
    main()
