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
import io
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from detector.images import ImageLoadError, load_image, resize_shorter
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


def read_coco_boxes(json_path: str | Path) -> tuple[dict, dict[int, str]]:
    """(COCO detection JSON, category id -> name), checked for what training and scoring read:
    images with an `id` and a `file_name`, annotations of a known image and category with a
    four-number `bbox`. DataError names the file and the first entry that is wrong (evaluation
    met them as KeyError / IndexError tracebacks)."""
    path = Path(json_path)
    data = _read_json(path)
    names = _category_names(data, path)
    images = data["images"]
    if not isinstance(images, list) or not all(isinstance(im, dict) and "id" in im and isinstance(im.get("file_name"), str)
                                               for im in images):
        raise DataError(f"'{path}': 'images' must be a list of objects with an 'id' and a 'file_name'")
    ids = {im["id"] for im in images}
    annotations = data.setdefault("annotations", [])
    if not isinstance(annotations, list):
        raise DataError(f"'{path}': 'annotations' must be a list")
    for ann in annotations:
        where = f"'{path}': annotation {ann.get('id') if isinstance(ann, dict) else ann!r}"
        if not isinstance(ann, dict) or ann.get("image_id") not in ids:
            raise DataError(f"{where} names no image of the file")
        if ann.get("category_id") not in names:
            raise DataError(f"{where} has unknown category_id {ann.get('category_id')!r}")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise DataError(f"{where}: 'bbox' must be four numbers [x, y, width, height], got {box!r}")
    return data, names


def _image_dir_check(image_dir: Path) -> None:
    if not image_dir.is_dir():
        raise DataError(f"image folder not found: '{image_dir}'")


def read_box_dataset(json_path: str | Path, image_dir: str | Path) -> tuple[list[BoxSample], DataStats]:
    """COCO detection JSON -> samples (images without usable boxes are kept as negatives)."""
    from pycocotools.coco import COCO

    json_path, image_dir = Path(json_path), Path(image_dir)
    data, names = read_coco_boxes(json_path)
    _image_dir_check(image_dir)
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


LABEL_SEPARATOR = ";"  # between labels in one CSV cell; a label containing it is quoted


def join_labels(names: list[str]) -> str:
    """One CSV cell holding several labels: `a;b`, with csv quoting for labels that contain `;` or quotes,
    so every label the app accepts round-trips through `split_labels`."""
    buf = io.StringIO()
    csv.writer(buf, delimiter=LABEL_SEPARATOR, lineterminator="").writerow(names)
    return buf.getvalue()


# A cell a spreadsheet would run as a formula ("=cmd|...", "+HYPERLINK(...)", "@SUM(...)") is written
# with a leading apostrophe, which spreadsheets show as text; reading takes it off again, so labels
# round-trip (a cell that itself starts with an apostrophe gets one more).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_safe(cell: str) -> str:
    """A CSV cell no spreadsheet runs as a formula (OWASP's CSV-injection advice)."""
    return f"'{cell}" if cell.startswith(FORMULA_STARTS) else cell


def from_spreadsheet(cell: str) -> str:
    """The cell `spreadsheet_safe` was given."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else cell


def split_labels(cell: str) -> list[str]:
    try:
        row = next(csv.reader([cell], delimiter=LABEL_SEPARATOR, strict=True), [])
    except csv.Error as e:
        raise ValueError(f"badly quoted labels {cell[:60]!r} ({e})") from None
    return [n for n in row if normalize_name(n)]


def _clean_names(value, where: str) -> list[str]:
    """Names of one entry, cleaned (`detector.vocabulary.clean_name`); DataError naming `where`."""
    from detector.vocabulary import clean_name

    if value is None or value == "":
        return []
    try:
        if isinstance(value, str):
            value = split_labels(value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"labels must be text, got {json.dumps(value)[:60]}")
        return [clean_name(v) for v in value if normalize_name(v)]
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None


def read_label_rows(path: str | Path) -> list[tuple[str, list[str], list[str], str | None]]:
    """(image name, positives, negatives, sha256 or None) per entry of a Detic/COCO JSON, CSV or JSONL
    label file, names cleaned. Any malformed entry is one DataError naming the file and the entry:
    nothing is read half."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise DataError(f"label file not found: '{name}'")
    rows: list[tuple[str, list[str], list[str], str | None]] = []
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"'{name}' is not UTF-8 text") from None
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        try:
            if not reader.fieldnames or "image" not in reader.fieldnames or "labels" not in reader.fieldnames:
                raise DataError(f"'{name}' needs a header line with 'image' and 'labels' columns")
            for row in reader:
                where = f"'{name}' line {reader.line_num}"
                if None in row or not (row.get("image") or "").strip():
                    raise DataError(f"{where}: expected an image name and labels in the header's columns")
                rows.append((from_spreadsheet(row["image"].strip()), _clean_names(from_spreadsheet(row["labels"]), where),
                             _clean_names(from_spreadsheet(row.get("negatives") or ""), where), None))
        except csv.Error as e:
            raise DataError(f"'{name}' line {reader.line_num}: {e}") from None
    elif suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"'{name}' line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("image"), str) or "labels" not in row:
                raise DataError(f"{where}: expected {{\"image\": \"name\", \"labels\": [...]}}")
            rows.append((row["image"], _clean_names(row["labels"], where), _clean_names(row.get("negatives"), where),
                         None))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"'{name}' is not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f"'{name}' is not Detic/COCO JSON: it needs an 'images' list and 'categories'")
        cats = data.get("categories")
        if not isinstance(cats, list) or not cats:
            raise DataError(f"'{name}' has no 'categories' list")
        names: dict[int, str] = {}
        for i, c in enumerate(cats):
            where = f"'{name}' category {i + 1}"
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
                raise DataError(f"{where}: needs an integer 'id' and a text 'name'")
            names[c["id"]] = _clean_names([c["name"]], where)[0] if normalize_name(c["name"]) else ""
            if not names[c["id"]]:
                raise DataError(f"{where}: the name is empty")
        for i, info in enumerate(data["images"]):
            where = f"'{name}' image {i + 1}"
            if not isinstance(info, dict) or not isinstance(info.get("file_name"), str):
                raise DataError(f"{where}: needs a 'file_name'")
            ids = []
            for key in ("pos_category_ids", "neg_category_ids"):
                value = info.get(key, [])
                if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
                    raise DataError(f"{where}: '{key}' must be a list of category ids")
                unknown = [v for v in value if v not in names]
                if unknown:
                    raise DataError(f"{where}: unknown category ids {unknown}")
                ids.append([names[v] for v in value])
            sha = info.get("sha256") if isinstance(info.get("sha256"), str) else None
            rows.append((info["file_name"], ids[0], ids[1], sha))
    return rows


def read_label_dataset(path: str | Path, image_dir: str | Path) -> tuple[list[LabelSample], DataStats]:
    """Image-level labels from Detic/COCO JSON, CSV or JSONL (by file extension), images under `image_dir`."""
    path, image_dir = Path(path), Path(image_dir)
    _image_dir_check(image_dir)
    stats = DataStats()
    samples = []
    for file_name, pos, neg, _ in read_label_rows(path):
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
    orig_w = img.original_size[1]
    t = torch.from_numpy(img.array).permute(2, 0, 1).float().div_(255)
    target = size * rng.uniform(*jitter)
    t, _ = resize_shorter(t, target, max_side_ratio * size / target)  # the longer side's cap ignores the jitter
    nw = t.shape[-1]
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
