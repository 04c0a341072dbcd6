"""Training data: COCO box labels, Detic-style image labels, categories matched by name.

- Box-labelled: a COCO JSON read with pycocotools; crowd boxes are ignored and degenerate
  boxes dropped (both counted in the log).
- Image-labelled: Detic's format (COCO `images` entries with `pos_category_ids` and optional
  `neg_category_ids`, no annotations), or a CSV (`image,labels` with `;` between labels) or
  JSONL (`{"image": ..., "labels": [...], "negatives": [...]}`) for people without COCO tooling.
- Categories are matched across files by (normalised, case-insensitive) name; the run's
  vocabulary is their union, in first-seen order.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from detector.images import ImageLoadError, load_image
from detector.vocabulary import normalize_name

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset file is missing, malformed or inconsistent; the message says which and how."""


@dataclass
class BoxSample:
    path: Path
    boxes: np.ndarray  # [K, 4] xyxy in image pixels
    names: list[str]  # K category names


@dataclass
class LabelSample:
    path: Path
    positives: list[str]
    negatives: list[str] = field(default_factory=list)


@dataclass
class DataStats:
    images: int = 0
    skipped_missing: int = 0
    crowd_ignored: int = 0
    degenerate_dropped: int = 0


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"dataset file not found: '{path}'")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"'{path}' is not valid JSON ({e})") from None
    if not isinstance(data, dict) or "images" not in data:
        raise DataError(f"'{path}' is not COCO-style JSON (needs 'images' and 'categories')")
    return data


def _category_names(data: dict, path: Path) -> dict[int, str]:
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DataError(f"'{path}' has no 'categories' list")
    try:
        return {int(c["id"]): normalize_name(c["name"]) for c in cats}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"'{path}': every category needs an integer 'id' and a 'name'") from None


def _image_dir_check(image_dir: Path) -> None:
    if not image_dir.is_dir():
        raise DataError(f"image folder not found: '{image_dir}'")


def read_box_dataset(json_path: str | Path, image_dir: str | Path) -> tuple[list[BoxSample], DataStats]:
    """COCO detection JSON -> samples (images without usable boxes are kept as negatives)."""
    from pycocotools.coco import COCO

    json_path, image_dir = Path(json_path), Path(image_dir)
    data = _read_json(json_path)
    _image_dir_check(image_dir)
    names = _category_names(data, json_path)
    data.setdefault("annotations", [])
    coco = COCO()
    coco.dataset = data
    try:
        coco.createIndex()
    except (KeyError, TypeError) as e:
        raise DataError(f"'{json_path}' has malformed images/annotations ({e})") from None
    stats = DataStats()
    samples = []
    for img_id in sorted(coco.imgs):
        info = coco.imgs[img_id]
        path = image_dir / info["file_name"]
        if not path.is_file():
            stats.skipped_missing += 1
            continue
        boxes, box_names = [], []
        for ann in coco.imgToAnns.get(img_id, []):
            if ann.get("iscrowd", 0):
                stats.crowd_ignored += 1
                continue
            if ann["category_id"] not in names:
                raise DataError(f"'{json_path}': annotation {ann.get('id')} has unknown category_id "
                                f"{ann['category_id']}")
            x, y, w, h = (float(v) for v in ann["bbox"])
            if not (w > 1 and h > 1 and np.isfinite([x, y, w, h]).all()):
                stats.degenerate_dropped += 1
                continue
            boxes.append([x, y, x + w, y + h])
            box_names.append(names[ann["category_id"]])
        samples.append(BoxSample(path, np.array(boxes, dtype=np.float32).reshape(-1, 4), box_names))
    stats.images = len(samples)
    log.info("box data %s: %d images, %d missing files skipped, %d crowd boxes ignored, %d degenerate "
             "boxes dropped", json_path.name, stats.images, stats.skipped_missing, stats.crowd_ignored,
             stats.degenerate_dropped)
    return samples, stats


def _split_labels(value) -> list[str]:
    if isinstance(value, str):
        value = value.replace("|", ";").split(";")
    return [n for n in (normalize_name(v) for v in (value or [])) if n]


def read_label_dataset(path: str | Path, image_dir: str | Path) -> tuple[list[LabelSample], DataStats]:
    """Image-level labels from Detic/COCO JSON, CSV or JSONL (by file extension)."""
    path, image_dir = Path(path), Path(image_dir)
    _image_dir_check(image_dir)
    raw: list[tuple[str, list[str], list[str]]] = []
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise DataError(f"dataset file not found: '{path}'")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "image" not in reader.fieldnames or "labels" not in reader.fieldnames:
                raise DataError(f"'{path}' needs a header with 'image' and 'labels' columns")
            for row in reader:
                raw.append((row["image"], _split_labels(row["labels"]), _split_labels(row.get("negatives") or "")))
    elif path.suffix.lower() == ".jsonl":
        if not path.is_file():
            raise DataError(f"dataset file not found: '{path}'")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                raw.append((row["image"], _split_labels(row["labels"]), _split_labels(row.get("negatives"))))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"'{path}' line {n}: expected {{\"image\": ..., \"labels\": [...]}} ({e})") from None
    else:
        data = _read_json(path)
        names = _category_names(data, path)
        for info in data["images"]:
            pos, neg = info.get("pos_category_ids", []), info.get("neg_category_ids", [])
            unknown = [c for c in [*pos, *neg] if c not in names]
            if unknown:
                raise DataError(f"'{path}': image {info.get('id')} uses unknown category ids {unknown}")
            raw.append((info["file_name"], [names[c] for c in pos], [names[c] for c in neg]))
    stats = DataStats()
    samples = []
    for file_name, pos, neg in raw:
        p = image_dir / file_name
        if not p.is_file():
            stats.skipped_missing += 1
            continue
        if pos or neg:
            samples.append(LabelSample(p, pos, neg))
    stats.images = len(samples)
    log.info("image-label data %s: %d images, %d missing files skipped", path.name, stats.images,
             stats.skipped_missing)
    return samples, stats


def build_vocabulary(*name_lists: list[str]) -> list[str]:
    """Union of names in first-seen order, matched case-insensitively."""
    seen: dict[str, str] = {}
    for names in name_lists:
        for n in names:
            seen.setdefault(n.casefold(), n)
    return list(seen.values())


def vocabulary_of(box: list[BoxSample], labels: list[LabelSample]) -> list[str]:
    return build_vocabulary([n for s in box for n in s.names],
                            [n for s in labels for n in [*s.positives, *s.negatives]])


# --- augmentation --------------------------------------------------------------------------


def load_resized(path: Path, size: int, rng: random.Random, jitter: tuple[float, float], max_side_ratio=1.667,
                 flip: bool = True) -> tuple[torch.Tensor, float, bool, tuple[int, int]]:
    """Image tensor [3, H, W] in [0, 1], resized so its shorter side is size x U(jitter), maybe
    flipped. Returns (tensor, box scale from original pixels, flipped, original (h, w))."""
    img = load_image(path)
    h, w = img.array.shape[:2]
    orig_w = img.original_size[1]
    target = size * rng.uniform(*jitter)
    scale = min(target / min(h, w), size * max_side_ratio / max(h, w))
    nh, nw = max(8, round(h * scale)), max(8, round(w * scale))
    t = torch.from_numpy(img.array).permute(2, 0, 1).float().div_(255)
    t = F.interpolate(t[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    flipped = flip and rng.random() < 0.5
    if flipped:
        t = t.flip(-1)
    return t, nw / orig_w, flipped, img.original_size


def transform_boxes(boxes: np.ndarray, scale: float, flipped: bool, new_width: int) -> torch.Tensor:
    b = torch.from_numpy(boxes).float() * scale
    if flipped and len(b):
        b = torch.stack([new_width - b[:, 2], b[:, 1], new_width - b[:, 0], b[:, 3]], dim=1)
    return b.reshape(-1, 4)


__all__ = [
    "BoxSample", "DataError", "DataStats", "ImageLoadError", "LabelSample", "build_vocabulary",
    "load_resized", "read_box_dataset", "read_label_dataset", "transform_boxes", "vocabulary_of",
]
