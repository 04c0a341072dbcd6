"""A procedural open-vocabulary detection benchmark (real LVIS/ImageNet cannot be downloaded here).

Each class is a colour-shape pair named in real language ("red circle", "blue star"), so text
embeddings carry structure across classes. Novel classes form a Latin-square diagonal: every
novel colour and every novel shape also occurs in some base class. Splits, as in Detic's
LVIS-base + ImageNet setting:
- `box_train.json`: scenes of several objects on textured backgrounds; boxes for *base* classes
  only (novel objects still appear, unannotated, as in LVIS-base);
- `image_labels.json`: object-centric images (one dominant object, sometimes a small unlabelled
  distractor), base and novel classes, Detic format with `pos_category_ids` only;
- `val.json`: scenes with boxes for all classes;
- `meta.json`: class names, novel and base lists.
Deterministic from the seed; the default size builds in seconds.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 215), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle", "star")
CLASSES = [f"{c} {s}" for c in COLOURS for s in SHAPES]
NOVEL = [f"{c} {s}" for c, s in zip(COLOURS, ("star", "triangle", "square", "circle"))]
BASE = [n for n in CLASSES if n not in NOVEL]


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Muted texture: smooth noise plus stripes or checks, never saturated like the objects."""
    base = rng.integers(90, 170, 3)
    noise = rng.normal(0, 1, (size // 8 + 1, size // 8 + 1, 3))
    noise = np.array(Image.fromarray(((noise - noise.min()) / (np.ptp(noise) + 1e-6) * 255).astype(np.uint8))
                     .resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    yy, xx = np.mgrid[0:size, 0:size]
    period, angle = rng.uniform(6, 20), rng.uniform(0, math.pi)
    stripes = (np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period) > 0)[..., None]
    img = base * (0.75 + 0.35 * noise) + stripes * rng.uniform(-25, 25)
    grey = img.mean(axis=2, keepdims=True)
    img = grey + 0.35 * (img - grey)  # desaturate
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _polygon(shape: str, box: tuple[float, float, float, float], rot: float) -> list[tuple[float, float]]:
    x1, y1, x2, y2 = box
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    if shape == "triangle":
        pts = [(0, -1), (1, 1), (-1, 1)]
    elif shape == "star":
        pts = [((1 if k % 2 == 0 else 0.45) * math.sin(k * math.pi / 5 + rot),
                -(1 if k % 2 == 0 else 0.45) * math.cos(k * math.pi / 5 + rot)) for k in range(10)]
    else:
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    return [(cx + px * rx, cy + py * ry) for px, py in pts]


def _draw(draw: ImageDraw.ImageDraw, name: str, box, rng: np.random.Generator) -> list[float]:
    colour, shape = name.split(" ")
    rgb = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLOURS[colour])
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    else:
        pts = _polygon(shape, box, rng.uniform(-0.3, 0.3))
        draw.polygon(pts, fill=rgb)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        box = (min(xs), min(ys), max(xs), max(ys))
    return [float(box[0]), float(box[1]), float(box[2]), float(box[3])]


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)


def _scene(rng, size: int, classes: list[str], n_objects: tuple[int, int], rel_size: tuple[float, float]):
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    objects: list[tuple[str, list[float]]] = []
    for _ in range(int(rng.integers(n_objects[0], n_objects[1] + 1))):
        for _attempt in range(20):
            s = rng.uniform(*rel_size) * size
            w, h = s * rng.uniform(0.8, 1.25), s * rng.uniform(0.8, 1.25)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            cand = (x, y, x + w, y + h)
            if all(_iou(cand, o[1]) < 0.1 for o in objects):
                name = classes[int(rng.integers(len(classes)))]
                objects.append((name, _draw(draw, name, cand, rng)))
                break
    return img.filter(ImageFilter.GaussianBlur(0.5)), objects


def write_benchmark(out: str | Path, seed: int, n_box: int, n_label: int, n_val: int, size: int,
                    classes: list[str], novel: list[str], base: list[str],
                    box_scene: Callable[[np.random.Generator, int], tuple[Image.Image, list]],
                    label_image: Callable[[np.random.Generator, int, int], tuple[Image.Image, list[str]]]
                    ) -> dict[str, Path]:
    """The one writer of the synthetic benchmarks (this one and `bench/hard_synthetic.py`): under
    `out`, `box_train.json` and `val.json` from `box_scene(rng, size)` -> (image, [(name, box)])
    (novel objects carry no box in box_train), `image_labels.json` from `label_image(rng, size, i)`
    -> (image, names present), `meta.json` and `images/`; one seeded generator draws everything in
    that order. Returns the paths of its files."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    cat_id = {n: i + 1 for i, n in enumerate(classes)}
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
    files = {}
    for split, n in (("box_train", n_box), ("val", n_val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img, objects = box_scene(rng, size)
            name = f"{split}/{i:05d}.png"
            img.save(out / "images" / name)
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
            for cls, (x1, y1, x2, y2) in objects:
                if split == "box_train" and cls in novel:
                    continue  # novel objects appear in box images but carry no box (LVIS-base)
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat_id[cls],
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        files[split] = out / f"{split}.json"
        files[split].write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    (out / "images" / "image_labels").mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n_label):
        img, present = label_image(rng, size, i)
        name = f"image_labels/{i:05d}.png"
        img.save(out / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size,
                       "pos_category_ids": sorted({cat_id[c] for c in present}), "neg_category_ids": []})
    files["image_labels"] = out / "image_labels.json"
    files["image_labels"].write_text(json.dumps({"images": images, "annotations": [], "categories": categories}))
    files["meta"] = out / "meta.json"
    files["meta"].write_text(json.dumps({"classes": classes, "novel": novel, "base": base, "seed": seed}, indent=2))
    files["images"] = out / "images"
    return files


def _object_centric(rng: np.random.Generator, size: int, i: int) -> tuple[Image.Image, list[str]]:
    """A tag image: one dominant object (classes in turn: balanced over base and novel), sometimes
    a small unlabelled distractor elsewhere."""
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    cls = CLASSES[i % len(CLASSES)]  # balanced over base and novel classes
    s = rng.uniform(0.45, 0.8) * size
    x, y = rng.uniform(0, size - s), rng.uniform(0, size - s)
    _draw(draw, cls, (x, y, x + s, y + s), rng)
    if rng.random() < 0.3:  # a small, unlabelled distractor somewhere else
        d = rng.uniform(0.1, 0.18) * size
        dx, dy = rng.uniform(0, size - d), rng.uniform(0, size - d)
        if _iou((dx, dy, dx + d, dy + d), (x, y, x + s, y + s)) == 0:
            _draw(draw, CLASSES[int(rng.integers(len(CLASSES)))], (dx, dy, dx + d, dy + d), rng)
    return img.filter(ImageFilter.GaussianBlur(0.5)), [cls]


def generate(out: str | Path, seed: int = 0, n_box: int = 240, n_label: int = 240, n_val: int = 80,
             size: int = 160) -> dict[str, Path]:
    """Write the benchmark under `out`; returns the paths of its files."""
    return write_benchmark(out, seed, n_box, n_label, n_val, size, CLASSES, NOVEL, BASE,
                           box_scene=lambda rng, size: _scene(rng, size, CLASSES, (2, 4), (0.18, 0.38)),
                           label_image=_object_centric)


def main(argv: list[str] | None = None, prog: str = "python -m train synthetic") -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write the images and the JSON files into")
    ap.add_argument("--seed", type=int, default=0, help="seed of every scene (default 0)")
    ap.add_argument("--box", type=int, default=240, help="scenes with box labels, base classes only (default 240)")
    ap.add_argument("--labels", type=int, default=240,
                    help="object-centric images with image-level labels, base and novel (default 240)")
    ap.add_argument("--val", type=int, default=80, help="validation scenes with boxes of every class (default 80)")
    ap.add_argument("--size", type=int, default=160, help="side of each image in pixels (default 160)")
    a = ap.parse_args(argv)
    files = generate(a.out, a.seed, a.box, a.labels, a.val, a.size)
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=2))
