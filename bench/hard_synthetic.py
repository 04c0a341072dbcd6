"""A harder synthetic open-vocabulary benchmark: novel classes whose look no base name tells.

`train/synthetic.py` composes novel names from base words ("blue square" from "blue …" and
"… square"), so box-only training already detects them. Here:
- 16 base classes: {red, green, blue, yellow} × {circle, square, triangle, star};
- 6 novel classes the names cannot teach: two unseen *shapes* in seen colours ("red cross",
  "blue cross", "green ring", "yellow ring" — a ring is a hollow circle, easily taken for a
  circle of the same colour), and two real words unrelated to the look ("violin": a purple
  hexagon, "lantern": an orange diamond — colours and shapes no base class has);
- clutter in every image: muted outlines, lines and blobs that belong to no class;
- `box_train.json`: scenes of 2–4 objects of all 22 classes, boxes for base classes only (novel
  objects appear unannotated, as in LVIS-base);
- `image_labels.json` (Detic format, `pos_category_ids` only): half object-centric (one large
  object), half scenes of 2–3 objects with every class present listed; classes balanced;
- `val.json`: scenes with boxes for all classes; `meta.json`: names, novel and base lists.

    python bench/hard_synthetic.py --out runs/hard_data
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.synthetic import _background, _iou, _polygon, write_benchmark  # noqa: E402

COLOURS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 215), "yellow": (235, 200, 30),
           "purple": (140, 50, 190), "orange": (245, 130, 20)}
BASE = [f"{c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle", "star")]
LOOKS = {"red cross": ("red", "cross"), "blue cross": ("blue", "cross"), "green ring": ("green", "ring"),
         "yellow ring": ("yellow", "ring"), "violin": ("purple", "hexagon"), "lantern": ("orange", "diamond")}
NOVEL = list(LOOKS)
CLASSES = BASE + NOVEL
LOOKS.update({n: tuple(n.split(" ")) for n in BASE})


def _shape_points(shape: str, box, rot: float) -> list[tuple[float, float]]:
    x1, y1, x2, y2 = box
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    if shape == "cross":
        a = 0.33
        pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a),
               (-a, -a)]
    elif shape == "hexagon":
        pts = [(math.cos(k * math.pi / 3 + rot), math.sin(k * math.pi / 3 + rot)) for k in range(6)]
    elif shape == "diamond":
        pts = [(0, -1), (1, 0), (0, 1), (-1, 0)]
    else:
        return _polygon(shape, box, rot)
    return [(cx + px * rx, cy + py * ry) for px, py in pts]


def draw_object(draw: ImageDraw.ImageDraw, name: str, box, rng: np.random.Generator) -> list[float]:
    colour, shape = LOOKS[name]
    rgb = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLOURS[colour])
    if shape in ("circle", "ring"):
        draw.ellipse(box, fill=None if shape == "ring" else rgb, outline=rgb if shape == "ring" else None,
                     width=max(2, int((box[2] - box[0]) * 0.16)))
        return [float(v) for v in box]
    pts = _shape_points(shape, box, rng.uniform(-0.3, 0.3))
    draw.polygon(pts, fill=rgb)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [min(xs), min(ys), max(xs), max(ys)]


def draw_clutter(draw: ImageDraw.ImageDraw, size: int, rng: np.random.Generator, n: int) -> None:
    """Muted outlines, lines and blobs: things in the image that belong to no class."""
    for _ in range(n):
        grey = int(rng.integers(40, 220))
        rgb = tuple(int(np.clip(grey + rng.integers(-25, 26), 0, 255)) for _ in range(3))
        s = rng.uniform(0.06, 0.3) * size
        x, y = rng.uniform(0, size - s), rng.uniform(0, size - s)
        kind = rng.integers(3)
        if kind == 0:
            draw.line([(x, y), (x + s * rng.uniform(-1, 1), y + s)], fill=rgb, width=int(rng.integers(1, 4)))
        elif kind == 1:
            draw.rectangle([x, y, x + s, y + s * rng.uniform(0.5, 1.5)], outline=rgb, width=2)
        else:
            draw.ellipse([x, y, x + s * 0.6, y + s * 0.6], fill=rgb)


def _place(rng, size, objects, rel_size) -> tuple[float, float, float, float] | None:
    for _attempt in range(30):
        s = rng.uniform(*rel_size) * size
        w, h = s * rng.uniform(0.85, 1.2), s * rng.uniform(0.85, 1.2)
        x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
        cand = (x, y, x + w, y + h)
        if all(_iou(cand, o[1]) < 0.05 for o in objects):
            return cand
    return None


def scene(rng, size: int, classes: list[str], n_objects: tuple[int, int], rel_size=(0.18, 0.36),
          clutter: tuple[int, int] = (2, 5)):
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    draw_clutter(draw, size, rng, int(rng.integers(clutter[0], clutter[1] + 1)))
    objects: list[tuple[str, list[float]]] = []
    for name in classes[: int(rng.integers(n_objects[0], n_objects[1] + 1))]:
        box = _place(rng, size, objects, rel_size)
        if box is not None:
            objects.append((name, draw_object(draw, name, box, rng)))
    return img.filter(ImageFilter.GaussianBlur(0.5)), objects


def _box_scene(rng: np.random.Generator, size: int):
    """A box image: up to four objects of any of the 22 classes, among clutter."""
    picks = [CLASSES[int(k)] for k in rng.integers(len(CLASSES), size=4)]
    return scene(rng, size, picks, (2, 4))


def _label_image(rng: np.random.Generator, size: int, i: int):
    """A tag image, every class present listed: even `i` object-centric, odd `i` a scene."""
    first = CLASSES[i % len(CLASSES)]  # balanced over base and novel classes
    if i % 2 == 0:  # object-centric: one large object plus clutter
        img, objects = scene(rng, size, [first], (1, 1), rel_size=(0.45, 0.75), clutter=(1, 3))
    else:  # a scene: 2-3 objects, every one of them tagged
        others = [CLASSES[int(k)] for k in rng.integers(len(CLASSES), size=2)]
        img, objects = scene(rng, size, [first, *others], (2, 3), rel_size=(0.25, 0.42))
    return img, [c for c, _ in objects]


def generate(out: str | Path, seed: int = 0, n_box: int = 240, n_label: int = 240, n_val: int = 80,
             size: int = 128) -> dict[str, Path]:
    """Write the benchmark under `out` with `train.synthetic`'s writer; returns the paths of its files."""
    return write_benchmark(out, seed, n_box, n_label, n_val, size, CLASSES, NOVEL, BASE,
                           box_scene=_box_scene, label_image=_label_image)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--box", type=int, default=240)
    ap.add_argument("--labels", type=int, default=240)
    ap.add_argument("--val", type=int, default=80)
    ap.add_argument("--size", type=int, default=128)
    a = ap.parse_args(argv)
    files = generate(a.out, a.seed, a.box, a.labels, a.val, a.size)
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=2))


if __name__ == "__main__":
    main()
