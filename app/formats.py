"""Box formats other tools speak: writing YOLO, Pascal VOC, COCO and Label Studio exports of the
store's images (with boxes per image), and naming the images in them. No Gradio, no model.

Images are named in exports by their original names (`export_names`: unique by stem, so every
image's label file has its own name). YOLO and VOC are written by supervision's
`DetectionDataset` (`as_yolo`, `as_pascal_voc`); COCO and Label Studio here, because they carry
what supervision's writers drop (scores, original names, `info`, `licenses`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import supervision as sv

from detector.images import IMAGE_SUFFIXES

# Label Studio's names for the tags of the default "object detection with bounding boxes" config.
LS_FROM, LS_TO = "label", "image"


def export_names(rows: list[dict]) -> dict[str, str]:
    """{image hash: its file name in an export}: the original name (its last path component),
    made unique by stem, case-insensitively (`a.jpg` and `A.png` would share a YOLO/VOC label
    file), by appending the start of the hash; an image without a name gets its hash."""
    used: set[str] = set()
    out: dict[str, str] = {}
    for row in rows:
        stored_suffix = Path(row["file"]).suffix
        base = Path(str(row.get("original_name") or "").replace("\\", "/")).name.strip()
        stem, suffix = Path(base).stem, Path(base).suffix
        if suffix.lower() not in IMAGE_SUFFIXES:
            stem, suffix = (base or "").strip(), stored_suffix
        stem = stem or row["hash"][:12]
        if stem.casefold() in used:
            stem = f"{stem}-{row['hash'][:8]}"
        used.add(stem.casefold())
        out[row["hash"]] = f"{stem}{suffix}"
    return out


def _records(det: sv.Detections) -> list[tuple[int, list[float], float | None]]:
    confidence = det.confidence if det.confidence is not None else [None] * len(det)
    class_id = det.class_id if det.class_id is not None else np.zeros(len(det), dtype=int)
    return [(int(c), [float(v) for v in box], None if s is None else float(s))
            for box, c, s in zip(det.xyxy, class_id, confidence)]


def stage_images(items: list[tuple[dict, sv.Detections]], names: dict[str, str], image_dir: Path,
                 folder: Path) -> list[Path]:
    """Copy each image's stored bytes to `folder/<export name>` (never re-encoded); their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for row, _ in items:
        target = folder / names[row["hash"]]
        shutil.copyfile(image_dir / row["file"], target)
        paths.append(target)
    return paths


def _dataset(classes: list[str], items, paths: list[Path]) -> sv.DetectionDataset:
    annotations = {}
    for (_, det), path in zip(items, paths):
        det = det if det.class_id is not None else sv.Detections(xyxy=det.xyxy, class_id=np.zeros(len(det), int))
        annotations[str(path)] = sv.Detections(xyxy=np.asarray(det.xyxy, dtype=np.float32).reshape(-1, 4),
                                               class_id=np.asarray(det.class_id, dtype=int),
                                               confidence=det.confidence)
    return sv.DetectionDataset(classes=list(classes), images=[str(p) for p in paths], annotations=annotations)


def coco(classes: list[str], items, names: dict[str, str], description: str) -> dict:
    """COCO detection JSON: images by export name (with sha256), boxes with scores where there
    are, `info` and `licenses` (the images' licence is unknown: one 'unknown' entry)."""
    images, anns = [], []
    for i, (row, det) in enumerate(items, 1):
        images.append({"id": i, "file_name": names[row["hash"]], "width": row["width"], "height": row["height"],
                       "license": 1, "sha256": row["hash"]})
        for c, (x1, y1, x2, y2), score in _records(det):
            w, h = x2 - x1, y2 - y1
            ann = {"id": len(anns) + 1, "image_id": i, "category_id": c + 1, "bbox": [x1, y1, w, h],
                   "area": w * h, "iscrowd": 0}
            if score is not None:
                ann["score"] = score
            anns.append(ann)
    return {"info": {"description": description, "version": "1.0", "year": int(time.strftime("%Y")),
                     "date_created": time.strftime("%Y-%m-%dT%H:%M:%S")},
            "licenses": [{"id": 1, "name": "unknown (the images' own licence applies)", "url": ""}],
            "images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(classes)]}


def _ls_results(classes: list[str], det: sv.Detections, row: dict, prefix: str) -> list[dict]:
    w, h = float(row["width"]), float(row["height"])
    out = []
    for j, (c, (x1, y1, x2, y2), score) in enumerate(_records(det)):
        result = {"id": f"{prefix}{j}", "type": "rectanglelabels", "from_name": LS_FROM, "to_name": LS_TO,
                  "original_width": int(w), "original_height": int(h), "image_rotation": 0,
                  "value": {"x": 100 * x1 / w, "y": 100 * y1 / h, "width": 100 * (x2 - x1) / w,
                            "height": 100 * (y2 - y1) / h, "rotation": 0, "rectanglelabels": [classes[c]]}}
        if score is not None:
            result["score"] = score
        out.append(result)
    return out


def label_studio(classes: list[str], items, names: dict[str, str], model_version: str,
                 annotated: dict[str, sv.Detections] | None = None) -> list[dict]:
    """Label Studio tasks: `data.image` the image's export name, the model's boxes as one
    prediction with scores (its score: the mean), and boxes people drew (`annotated`, by image
    hash) as an annotation."""
    tasks = []
    for i, (row, det) in enumerate(items, 1):
        results = _ls_results(classes, det, row, f"p{i}-")
        scores = [r["score"] for r in results if "score" in r]
        task = {"id": i, "data": {"image": names[row["hash"]]}, "meta": {"sha256": row["hash"]},
                "predictions": [{"model_version": model_version, "result": results,
                                 "score": float(np.mean(scores)) if scores else 0.0}]}
        drawn = (annotated or {}).get(row["hash"])
        if drawn is not None and len(drawn):
            task["annotations"] = [{"result": _ls_results(classes, drawn, row, f"a{i}-")}]
        tasks.append(task)
    return tasks


def write_box_export(fmt: str, classes: list[str], items, rows_image_dir: Path, out: Path, stem: str, *,
                     with_images: bool, description: str, model_version: str,
                     annotated: dict[str, sv.Detections] | None = None) -> Path:
    """One export file in `out`: `<stem>.json` (coco, label_studio) or `<stem>.zip` (yolo: data.yaml
    + labels/; voc: annotations/; any format `with_images`: + images/ under their export names)."""
    import json

    names = export_names([row for row, _ in items])
    work = Path(tempfile.mkdtemp(prefix="ovd-export-work-"))
    try:
        images = stage_images(items, names, rows_image_dir, work / "images")
        if fmt == "yolo":
            _dataset(classes, items, images).as_yolo(annotations_directory_path=str(work / "labels"),
                                                     data_yaml_path=str(work / "data.yaml"))
            (work / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
        elif fmt == "voc":
            _dataset(classes, items, images).as_pascal_voc(annotations_directory_path=str(work / "annotations"))
        elif fmt == "coco":
            (work / "annotations.json").write_text(
                json.dumps(coco(classes, items, names, description), ensure_ascii=False), encoding="utf-8")
        elif fmt == "label_studio":
            (work / "tasks.json").write_text(
                json.dumps(label_studio(classes, items, names, model_version, annotated), ensure_ascii=False,
                           indent=1), encoding="utf-8")
        else:
            raise ValueError(f"unknown box format {fmt!r}")
        if not with_images:
            shutil.rmtree(work / "images")
            single = {"coco": "annotations.json", "label_studio": "tasks.json"}.get(fmt)
            if single:
                target = out / f"{stem}.json"
                shutil.move(str(work / single), target)
                return target
        return zip_folder(work, out / f"{stem}.zip")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def zip_folder(folder: Path, target: Path) -> Path:
    """Every file under `folder`, by its path relative to it (sorted: the same export, the same zip)."""
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            z.write(path, path.relative_to(folder).as_posix())
    partial.replace(target)
    return target
