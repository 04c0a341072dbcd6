"""Box formats other tools speak: writing YOLO, Pascal VOC, COCO and Label Studio exports of the
store's images (with boxes per image), naming the images in them, and reading label files with
boxes (COCO, a YOLO zip, Label Studio JSON) besides the tag formats. No Gradio, no model.

Images are named in exports by their original names (`export_names`: unique by stem, so every
image's label file has its own name). YOLO and VOC are written by supervision's
`DetectionDataset` (`as_yolo`, `as_pascal_voc`); COCO and Label Studio here, because they carry
what supervision's writers drop (scores, original names, `info`, `licenses`).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
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


def boxes_as_detections(boxes: list[dict], classes: list[str]) -> dict[str, sv.Detections]:
    """The store's boxes (`LabelStore.boxes()`) as {image hash: Detections} over `classes`."""
    index = {c.casefold(): i for i, c in enumerate(classes)}
    per_image: dict[str, list[dict]] = {}
    for b in boxes:
        if b["label"].casefold() in index:
            per_image.setdefault(b["image"], []).append(b)
    return {h: sv.Detections(xyxy=np.array([b["box"] for b in bs], dtype=np.float32),
                             class_id=np.array([index[b["label"].casefold()] for b in bs], dtype=int))
            for h, bs in per_image.items()}


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
    + labels/; voc: annotations/; any format `with_images`: + images/ under their export names).
    YOLO and VOC carry one set of boxes per image, to train on: the boxes people drew or imported
    (`annotated`) where an image has some, the model's elsewhere; COCO keeps the model's scored
    detections and Label Studio both (prediction and annotation)."""
    names = export_names([row for row, _ in items])
    if fmt in ("yolo", "voc") and annotated:
        items = [(row, annotated[row["hash"]] if len(annotated.get(row["hash"], ())) else det) for row, det in items]
    work = Path(tempfile.mkdtemp(dir=out))  # the export's own folder: nothing left behind if it is killed
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


# --- reading label files -------------------------------------------------------------------------
@dataclass
class Entry:
    """One image's labels in a label file."""

    names: list[str]  # names the file gives the image (the first is reported when it is not found)
    sha256: str | None = None
    positives: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    boxes: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)  # (label, xyxy)
    relative: bool = False  # boxes as fractions of the image's width and height (YOLO, Label Studio)


@dataclass
class LabelFile:
    kind: str  # what the file was read as, for the import's sentence
    entries: list[Entry]
    notes: list[str] = field(default_factory=list)  # what was found and not imported

    @property
    def box_count(self) -> int:
        return sum(len(e.boxes) for e in self.entries)


LABEL_SUFFIXES = (".json", ".csv", ".jsonl")
MAX_LABEL_FILE_BYTES = 200 * 1024 * 1024
YOLO_CLASS_FILES = ("data.yaml", "data.yml", "classes.txt", "obj.names")
# All the text a YOLO zip's class and label files may hold, uncompressed (~1.5 M boxes): a few MB of
# zip can inflate to gigabytes of spaces, which read whole would take the server's memory.
MAX_YOLO_TEXT_BYTES = 32 * 1024 * 1024


def is_yolo_zip(path: Path) -> bool:
    """A zip holding a YOLO dataset: data.yaml / classes.txt and label .txt files."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [Path(n).name.lower() for n in z.namelist()]
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n in YOLO_CLASS_FILES for n in names) and any(
        n.endswith(".txt") and n not in YOLO_CLASS_FILES for n in names)


def extract_label_files(path: Path, folder: Path) -> list[Path]:
    """The label files (JSON, CSV, JSONL) in an export's zip, outside its images/, written to `folder`."""
    out = []
    try:
        with zipfile.ZipFile(path) as z:
            for m in z.infolist():
                p = Path(m.filename)
                if m.is_dir() or p.suffix.lower() not in LABEL_SUFFIXES or "images" in p.parts[:-1]:
                    continue
                if m.file_size > MAX_LABEL_FILE_BYTES:
                    raise ValueError(f"'{path.name}': {p.name} is larger than {MAX_LABEL_FILE_BYTES // 2**20} MB")
                target = folder / f"{len(out)}" / p.name
                target.parent.mkdir(parents=True)
                target.write_bytes(z.read(m))
                out.append(target)
    except zipfile.BadZipFile:
        return []
    return out


def read_label_file(path: Path) -> LabelFile:
    """Any label file the app imports, by suffix and content: CSV, JSONL, Detic/COCO image labels,
    COCO with boxes, Label Studio tasks (a JSON list), a YOLO or Pascal VOC zip. DataError names what is wrong."""
    from train.data import DataError, read_label_rows

    path = Path(path)
    if path.suffix.lower() == ".zip":
        return read_yolo_zip(path) if is_yolo_zip(path) else read_voc_zip(path)
    data = None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"'{path.name}' is not valid JSON ({e})") from None
        except RecursionError:  # '[' * 100000: nested deeper than any label file
            raise DataError(f"'{path.name}' is not a label file: its JSON is nested too deeply") from None
        if isinstance(data, list):
            return read_label_studio(data, path.name)
    rows = read_label_rows(path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list) and data["annotations"]:
        return _coco_boxes(data, rows, path.name)
    kind = {".csv": "CSV", ".jsonl": "JSONL"}.get(path.suffix.lower(), "Detic/COCO image labels")
    return LabelFile(kind, [Entry([name], sha, pos, neg) for name, pos, neg, sha in rows])


def _coco_boxes(data: dict, rows: list, file: str) -> LabelFile:
    """COCO detection JSON (its images' pos/neg_category_ids, when there are, as tags too)."""
    from train.data import DataError

    names = {c["id"]: c["name"] for c in data["categories"]}
    entries, by_id = [], {}
    for info, (name, pos, neg, sha) in zip(data["images"], rows):
        entries.append(Entry([name], sha, pos, neg))
        if info.get("id") in by_id:  # boxes would land on whichever image came last
            raise DataError(f"'{file}': image id {info.get('id')!r} is given to two images")
        by_id[info.get("id")] = entries[-1]
    crowd = no_box = 0
    for i, ann in enumerate(data["annotations"]):
        where = f"'{file}' annotation {i + 1}"
        if not isinstance(ann, dict) or ann.get("image_id") not in by_id:
            raise DataError(f"{where}: its image_id is not one of the file's images")
        if ann.get("category_id") not in names:
            raise DataError(f"{where}: unknown category_id {ann.get('category_id')!r}")
        if ann.get("iscrowd"):
            crowd += 1
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            no_box += 1
            continue
        x, y, w, h = (float(v) for v in bbox)
        by_id[ann["image_id"]].boxes.append((names[ann["category_id"]], (x, y, x + w, y + h)))
    notes = [f"{crowd} crowd region(s) not imported"] if crowd else []
    notes += [f"{no_box} annotation(s) without a box not imported"] if no_box else []
    return LabelFile("COCO", entries, notes)


def _ls_image_names(ref: str) -> list[str]:
    """The names a Label Studio task's image reference may have here: its file name, and that name
    without the '1a2b3c4d-' prefix Label Studio gives uploaded files."""
    import re
    from urllib.parse import unquote

    ref = unquote(ref.split("?d=", 1)[1] if "?d=" in ref else ref.split("?", 1)[0])
    base = Path(ref.replace("\\", "/")).name
    stripped = re.sub(r"^[0-9a-f]{8}-", "", base)
    return [base] if stripped == base else [base, stripped]


def _as_list(value) -> list:
    """A Label Studio value that should be a list of names: one name given as a string is one name
    (iterating it read "dog" as the tags d, o, g); anything else that is not a list, none."""
    if isinstance(value, str):
        return [value]
    return value if isinstance(value, list) else []


def read_label_studio(tasks: list, file: str) -> LabelFile:
    """Label Studio's JSON export: per task, its latest annotation that was not cancelled:
    rectangles (percent of the image) as boxes, choices as tags. Predictions are not labels."""
    from train.data import DataError

    if not tasks:
        raise DataError(f"'{file}' is an empty list: neither Label Studio tasks nor Detic/COCO JSON")
    entries, predicted, no_annotation, rotated = [], 0, 0, 0
    for i, task in enumerate(tasks):
        where = f"'{file}' task {i + 1}"
        data = task.get("data") if isinstance(task, dict) else None
        ref = None
        if isinstance(data, dict):
            ref = data["image"] if isinstance(data.get("image"), str) else next(
                (v for v in data.values() if isinstance(v, str)), None)
        if not isinstance(ref, str) or not ref.strip():
            raise DataError(f"{where}: needs 'data' with the image's name or URL (Label Studio's JSON export)")
        entry = Entry(_ls_image_names(ref), relative=True)
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        if not annotations:
            no_annotation += 1
            predicted += sum(len(p.get("result") or []) for p in task.get("predictions") or [] if isinstance(p, dict))
        for r in (annotations[-1].get("result") or []) if annotations else []:
            value = r.get("value") if isinstance(r, dict) else None
            if not isinstance(value, dict):
                continue
            if r.get("type") == "choices":
                entry.positives += [str(c) for c in _as_list(value.get("choices"))]
            elif r.get("type") in ("rectanglelabels", "rectangle"):
                try:
                    x, y, w, h = (float(value[k]) / 100 for k in ("x", "y", "width", "height"))
                except (KeyError, TypeError, ValueError):
                    raise DataError(f"{where}: a rectangle needs x, y, width and height") from None
                rotated += bool(value.get("rotation"))
                for label in _as_list(value.get("rectanglelabels") or value.get("labels")):
                    entry.boxes.append((str(label), (x, y, x + w, y + h)))
        entries.append(entry)
    notes = []
    if no_annotation:
        notes.append(f"{no_annotation} task(s) without an annotation" +
                     (f" ({predicted} predicted box(es): predictions are not imported as labels)" if predicted else ""))
    if rotated:
        notes.append(f"{rotated} rotated rectangle(s) imported unrotated")
    return LabelFile("Label Studio", entries, notes)


def _zip_text(name: str):
    """`text(zip, member, errors)`: a label file's text, counted against one budget for the whole
    zip (`MAX_YOLO_TEXT_BYTES`) before it is inflated."""
    from train.data import DataError

    budget = [MAX_YOLO_TEXT_BYTES]

    def text(z: zipfile.ZipFile, member: str, errors: str | None = "strict") -> str | bytes:
        """Its text (`errors=None`: its bytes, for a reader that decodes them itself)."""
        left = budget[0]
        if z.getinfo(member).file_size <= left:
            with z.open(member) as f:
                data = f.read(left + 1)  # never more than is left, whatever the header says
            if len(data) <= left:
                budget[0] = left - len(data)
                return data if errors is None else data.decode("utf-8", errors)
        raise DataError(f"'{name}': its class and label files hold more than {MAX_YOLO_TEXT_BYTES // 2**20} MB of text")

    return text


MAX_VOC_XML_BYTES = 4 * 2**20  # one image's annotation: a few kB, a crowded one some hundred
MAX_BOXES_PER_IMAGE = 10_000  # LVIS's most crowded image has under 1,000


def _voc_members(z: zipfile.ZipFile) -> list[str]:
    return [m for m in z.namelist() if m.lower().endswith(".xml") and "images" not in Path(m).parts[:-1]]


def is_voc_zip(path: Path) -> bool:
    """A zip holding Pascal VOC annotations (.xml files, e.g. this app's VOC export)."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(_voc_members(z))
    except (zipfile.BadZipFile, OSError):
        return False


def read_voc_zip(path: Path) -> LabelFile:
    """Pascal VOC: one <annotation> XML per image (its <filename>, and per <object> a <name> and a
    <bndbox> in VOC's 1-based pixels, as this app's VOC export writes them), plus the images."""
    import xml.etree.ElementTree as ET

    from train.data import DataError

    name, text = path.name, _zip_text(path.name)
    entries, other, no_box, over = [], 0, 0, 0
    with zipfile.ZipFile(path) as z:
        for member in _voc_members(z):
            if z.getinfo(member).file_size > MAX_VOC_XML_BYTES:  # parsed whole: a 32 MB one took 1.4 GB
                raise DataError(f"'{name}' {member} is larger than {MAX_VOC_XML_BYTES // 2**20} MB: not one "
                                "image's VOC annotation")
            body = text(z, member, None)
            # VOC has no DOCTYPE (entities can inflate without bound) and is UTF-8 or a one-byte
            # encoding its declaration names, which the parser reads from the bytes (UTF-16: NULs)
            if b"\0" in body or re.search(rb"<!\s*(DOCTYPE|ENTITY)", body, re.IGNORECASE):
                raise DataError(f"'{name}' {member}: XML with a DOCTYPE, entities or in UTF-16 is not read")
            try:
                root = ET.fromstring(body)
            except (ET.ParseError, LookupError, ValueError) as e:  # LookupError: an encoding Python lacks
                raise DataError(f"'{name}' {member} is not valid XML ({e})") from None
            if root.tag != "annotation":
                other += 1
                continue
            entry = Entry([root.findtext("filename") or Path(member).stem])
            for obj in root.iter("object"):
                label, box = (obj.findtext("name") or "").strip(), obj.find("bndbox")
                try:
                    x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                except (AttributeError, TypeError, ValueError):
                    no_box += 1
                    continue
                if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
                    no_box += 1
                elif len(entry.boxes) >= MAX_BOXES_PER_IMAGE:
                    over += 1
                elif label:
                    entry.boxes.append((label, (x1 - 1, y1 - 1, x2, y2)))
            entries.append(entry)
    if not entries:
        raise DataError(f"'{name}' holds no Pascal VOC <annotation> files")
    notes = [f"{other} XML file(s) that are not VOC annotations skipped"] if other else []
    notes += [f"{no_box} object(s) without a readable box not imported"] if no_box else []
    notes += [f"{over} box(es) beyond {MAX_BOXES_PER_IMAGE:,} on one image not imported"] if over else []
    return LabelFile("Pascal VOC", entries, notes)


def read_yolo_zip(path: Path) -> LabelFile:
    """A YOLO dataset zip: class names from data.yaml (`names`: a list or {id: name}) or
    classes.txt, one label .txt per image (`class cx cy w h` normalised, or a polygon) found beside
    it in the labels/ folder that mirrors its images/ folder, else by its name."""
    import yaml

    from train.data import DataError

    name = path.name
    text = _zip_text(name)
    with zipfile.ZipFile(path) as z:
        members = [m for m in z.namelist() if not m.endswith("/")]
        lower = {Path(m).name.lower(): m for m in members}
        classes: list[str] | None = None
        for key in ("data.yaml", "data.yml"):
            if key in lower:
                try:
                    spec = yaml.safe_load(text(z, lower[key]))
                except (yaml.YAMLError, UnicodeDecodeError) as e:
                    raise DataError(f"'{name}': {key} is not readable YAML ({e})") from None
                found = spec.get("names") if isinstance(spec, dict) else None
                if isinstance(found, dict):
                    found = [found[k] for k in sorted(found, key=int)]
                if not isinstance(found, list) or not found:
                    raise DataError(f"'{name}': {key} has no 'names' list")
                classes = [str(c) for c in found]
                break
        if classes is None:
            key = "classes.txt" if "classes.txt" in lower else "obj.names"
            classes = [c.strip() for c in text(z, lower[key]).splitlines() if c.strip()]
        texts = {m: m for m in members if m.lower().endswith(".txt") and Path(m).name.lower() not in YOLO_CLASS_FILES}
        by_stem: dict[str, list[str]] = {}
        for m in texts:
            by_stem.setdefault(Path(m).stem, []).append(m)
        entries, unmatched = [], 0
        for m in members:
            if Path(m).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            parts = list(Path(m).with_suffix(".txt").parts)
            mirrored = "/".join("labels" if p == "images" else p for p in parts)
            label = mirrored if mirrored in texts else (by_stem.get(Path(m).stem) or [None])[0]
            entry = Entry([Path(m).name], relative=True)
            if label is None:
                unmatched += 1
            else:
                entry.boxes = _yolo_boxes(text(z, label, "replace"), classes, f"'{name}' {label}")
            entries.append(entry)
    notes = [f"{unmatched} image(s) without a label file (no objects)"] if unmatched else []
    if not entries:
        raise DataError(f"'{name}' holds YOLO labels but no images: zip the images/ folder with labels/")
    return LabelFile("YOLO", entries, notes)


def _yolo_boxes(text: str, classes: list[str], where: str) -> list[tuple[str, tuple[float, float, float, float]]]:
    from train.data import DataError

    boxes = []
    for n, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            cls, values = int(tokens[0]), [float(t) for t in tokens[1:]]
        except ValueError:
            raise DataError(f"{where} line {n}: expected 'class cx cy w h'") from None
        if not 0 <= cls < len(classes):
            raise DataError(f"{where} line {n}: class {cls} is not one of the {len(classes)} names")
        if len(values) in (4, 5):  # box (with a confidence)
            cx, cy, w, h = values[:4]
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        elif len(values) >= 6 and len(values) % 2 == 0:  # a polygon: its bounding box
            xs, ys = values[0::2], values[1::2]
            box = (min(xs), min(ys), max(xs), max(ys))
        else:
            raise DataError(f"{where} line {n}: expected 'class cx cy w h' or a polygon")
        boxes.append((classes[cls], box))
    return boxes
