"""The dataset as a whole: label edits (rename, merge, delete), importing label files and
exporting tags or the model's boxes in the usual formats. A part of `AppService`."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from detector.files import atomic_write, atomic_write_json, remove_older_than
from detector.vocabulary import parse_vocabulary

from .service_base import Progress, _nonempty, _upload_path, endpoint
from .store import StoreError, best_named, path_parts

EXPORT_FORMATS = ("detic", "csv", "coco_detections", "yolo", "voc", "label_studio")
EXPORTS = Path(tempfile.gettempdir()) / "ovd-exports"  # one private folder per export, under one parent
KEEP_EXPORTS_S = 3600  # an export's folder is removed by a later export after this long (downloaded by then)


def _export_folder() -> Path:
    """A fresh private folder for one export. Older ones (and any a killed export left behind) are
    removed first: every export had stayed in the temporary folder for good."""
    EXPORTS.mkdir(parents=True, exist_ok=True)
    remove_older_than(EXPORTS, KEEP_EXPORTS_S)
    return Path(tempfile.mkdtemp(dir=EXPORTS))


class DatasetMixin:
    """Label edits, import and export; uses `self.store`, `self.policy`, `self.predictor` and
    `self.serving` (set by `AppService`)."""

    @endpoint()
    def dataset(self) -> dict:
        """{"images", "tagged", "labels": {name: {"positive", "negative"}}}."""
        tagged, total = self.store.progress()
        return {"images": total, "tagged": tagged, "labels": self.store.counts()}

    @endpoint()
    def images_with_label(self, label: str) -> list[dict]:
        """Stored images tagged present with `label`: [{hash, name, path}]."""
        return [{"hash": r["hash"], "name": r["original_name"] or r["hash"][:12]}
                for r in self.store.images() if label in r["positives"]]

    @endpoint()
    def rename_label(self, old: str, new: str) -> dict:
        """Rename a label everywhere (an existing name merges); returns the dataset summary."""
        self.store.rename_label(old, new)
        return self.dataset()

    @endpoint()
    def merge_labels(self, sources: str | list[str], into: str) -> dict:
        sources = parse_vocabulary(sources) if _nonempty(sources) else []
        if not sources or not (into or "").strip():
            raise StoreError("pick labels to merge and the name to merge them into")
        self.store.merge_labels(sources, into)
        return self.dataset()

    @endpoint()
    def delete_label(self, name: str) -> dict:
        self.store.delete_label(name)
        return self.dataset()

    @endpoint(api=False)
    def import_labels(self, files: list) -> dict:
        """Tags and boxes from uploaded label files: Detic/COCO image labels, CSV, JSONL, COCO with
        boxes, Label Studio JSON (its annotations' rectangles and choices), YOLO zips (data.yaml
        or classes.txt, labels/ and the images) and Pascal VOC zips (XML annotations), with the images uploaded beside them (files or
        zips) or already in the store (matched by sha256 or name), or in an allowed server folder.
        Each file is imported whole or not at all (one transaction). Returns what happened:
        `imported` images given tags or boxes, `boxes` stored, and `messages`: one sentence per
        file saying what was found in it and what was done."""
        from . import formats

        files = [f for f in (files if isinstance(files, (list, tuple)) else [files]) if f is not None]
        paths = [_upload_path(f) for f in files]
        label_files = [p for p in paths if p and p.suffix.lower() in formats.LABEL_SUFFIXES]
        unpacked = Path(tempfile.mkdtemp(prefix="ovd-import-"))
        try:
            for p in paths:  # a YOLO zip is a label file; an export's zip holds one beside its images/
                if p and p.suffix.lower() == ".zip":
                    label_files += ([p] if formats.is_yolo_zip(p) or formats.is_voc_zip(p)
                                    else formats.extract_label_files(p, unpacked / p.stem))
            if not label_files:
                raise StoreError("choose a label file: Detic/COCO JSON (tags or boxes), CSV, JSONL, Label Studio JSON, "
                                 "or a YOLO or Pascal VOC zip (and, optionally, the images)")
            return self._import_files(label_files, [f for f, p in zip(files, paths) if p not in label_files
                                                    or p.suffix.lower() == ".zip"])
        except ValueError as e:
            raise StoreError(str(e)) from None
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)

    def _import_files(self, label_files: list[Path], images: list) -> dict:
        from train.data import DataError

        from . import formats

        parsed_files = []  # every label file read before any image is stored: a bad one leaves the store as it was
        for path in label_files:
            try:
                parsed_files.append((path, formats.read_label_file(path)))
            except (DataError, OSError) as e:
                raise StoreError(str(e)) from None
            except (KeyError, TypeError, AttributeError, IndexError) as e:  # a shape no reader expects
                raise StoreError(f"'{path.name}' is not a label file this app reads: unexpected "
                                 f"{type(e).__name__} ({str(e)[:80]})") from None
        stored_before = self.store.db["images"].count
        uploaded = self.add_images(images)  # a zip's images too
        stored, stored_files = self.store.name_index()  # as the import starts (an allowed folder's finds come by path)
        added = set(uploaded["added"])
        given: dict[str, list[tuple[str, str]]] = {}  # file name (any case) -> (name, hash): as uploaded, as stored
        for named, h in uploaded["names"].items():
            if parts := path_parts(named or ""):
                given.setdefault(parts[-1].casefold(), []).append((named, h))
        for base, pairs in stored.items():
            given.setdefault(base, []).extend((named, h) for named, h in pairs if h in added)
        report = {"imported": 0, "boxes": 0, "missing": [], "ambiguous": [],
                  "skipped": list(uploaded["skipped"]), "messages": []}
        for path, parsed in parsed_files:
            tags, boxes, missing, ambiguous = [], {}, [], []
            clashing = _clashing_names(parsed.entries)
            for entry in parsed.entries:
                found = self._match_image(entry.names, entry.sha256, (given, stored, stored_files), clashing)
                if len(found) != 1:
                    if entry.positives or entry.negatives or entry.boxes:
                        # as the file names it, folders included ("sub1/photo.jpg", not "photo.jpg")
                        (ambiguous if found else missing).append("/".join(path_parts(entry.names[0])))
                    continue
                h = found[0]
                if entry.positives or entry.negatives:
                    tags.append((h, entry.positives, entry.negatives))
                if entry.boxes:
                    row = self.store._image(h)
                    sx, sy = (row["width"], row["height"]) if entry.relative else (1, 1)
                    boxes.setdefault(h, []).extend((n, (x1 * sx, y1 * sy, x2 * sx, y2 * sy))
                                                   for n, (x1, y1, x2, y2) in entry.boxes)
            stored = self.store.import_tags(tags, boxes)
            done = len({h for h, *_ in tags} | set(boxes))
            report["imported"] += done
            report["boxes"] += stored["boxes"]
            report["missing"] += missing
            report["ambiguous"] += ambiguous
            report["messages"].append(_import_sentence(path.name, parsed, tags, stored, missing, ambiguous))
        report["images_added"] = self.store.db["images"].count - stored_before  # uploaded, or from allowed folders
        return report

    def _match_image(self, names: list[str], sha256: str | None, named: tuple, clashing: set[str] = frozenset()) -> list[str]:
        """The stored images a label file's entry may mean (one: found; two or more: its name is
        ambiguous): by sha256 when that image is stored, by the stored file's name, then by each
        of its names among the images uploaded beside it (they win over stored ones), then among
        those stored (`best_named`: with their folders, 'b/photo.jpg' is not 'a/photo.jpg'), then
        the file of that path in an allowed server folder, and last an image stored or uploaded
        under the name's end alone ('photo.jpg' for 'sub1/photo.jpg'), unless the label file names
        that file in other folders too (`clashing`: they cannot all be that one image)."""
        if sha256 and self.store.has_image(sha256):
            return [sha256]  # an unknown sha256 proves nothing: the names decide, as without one
        given, stored, stored_files = named  # {file name, case-folded: [(name, hash)]} x 2, {stored file: hash}
        ambiguous, weak = [], []
        for name in names:
            base = path_parts(name)[-1:]
            if not base:
                continue
            if h := stored_files.get(base[0].lower()):  # "ab/<sha256>.png", as this app's own exports may name it
                return [h]
            for pool in (given.get(base[0].casefold(), []), stored.get(base[0].casefold(), [])):
                found, is_weak = best_named(name, pool)
                if len(found) == 1 and not is_weak:
                    return found
                if len(found) > 1:  # several beside the label file (or stored): not settled by the others
                    ambiguous = ambiguous or found
                    break
                weak = weak or (found if found and base[0] not in clashing else [])
        h = self._from_allowed_folders(names[0])
        return [h] if h else weak or ambiguous

    def _from_allowed_folders(self, name: str) -> str | None:
        for folder in self.policy.allowed_dirs:
            try:  # a name too long for the file system, or one no file system takes, is no file
                candidate = (folder / name).resolve()
                if (folder in candidate.parents) and candidate.is_file():
                    return self.store.add_image(candidate, "/".join(path_parts(name)))
            except (ValueError, OSError):
                return None
        return None

    @endpoint(file=True)
    def export_labels(self, fmt: str = "detic", with_images: bool = False, *, progress: Progress | None = None) -> str:
        """Write an export file (named after the dataset and today's date); returns its path.
        Formats (`EXPORT_FORMATS`): the tags as `detic` JSON or `csv`; the model's boxes on every
        image as `coco_detections` (COCO with scores); `yolo` (zip: data.yaml, classes.txt,
        labels/) and `voc` (zip of Pascal VOC XML): the stored boxes (drawn or imported) on images
        that have some, the model's on the others; `label_studio` (tasks with the model's boxes as
        scored predictions and stored boxes as annotations). Images are named by their original
        names; `with_images` zips them (images/) with the labels. `progress`: see
        `detections_coco` (the tag formats are written at once)."""
        return str(self.export(fmt, progress, with_images=bool(with_images)))

    def export_name(self, what: str) -> str:
        """`<dataset>_<YYYY-MM-DD>_<what>`: the dataset is the data folder's name."""
        dataset = "".join(c if c.isalnum() or c in "-_" else "-" for c in self.data_dir.resolve().name) or "dataset"
        return f"{dataset}_{time.strftime('%Y-%m-%d')}_{what}"

    def export(self, fmt: str, progress: Progress | None = None, with_images: bool = False) -> Path:
        """A fresh file in a private temporary folder (never a path inside the data folder)."""
        from . import formats

        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"unknown export format {fmt!r}: {', '.join(EXPORT_FORMATS)}")
        out = _export_folder()
        if fmt in ("detic", "csv"):
            what = "image_labels.json" if fmt == "detic" else "image_labels.csv"
            if not with_images:
                if fmt == "detic":
                    return atomic_write_json(out / self.export_name(what), self.store.export_detic(), indent=1)
                return atomic_write(out / self.export_name(what), self.store.export_csv())
            rows = [r for r in self.store.images() if r["positives"] or r["negatives"]]
            names = formats.export_names(rows)
            work = Path(tempfile.mkdtemp(dir=out))  # the zip's contents, removed once zipped
            try:
                formats.stage_images([(r, None) for r in rows], names, self.store.image_dir, work / "images")
                if fmt == "detic":
                    atomic_write_json(work / what, self.store.export_detic(names), indent=1)
                else:
                    atomic_write(work / what, self.store.export_csv(names))
                # "image_labels_json.zip" / "image_labels_csv.zip": the two zips had one name
                return formats.zip_folder(work, out / self.export_name(what.replace(".", "_") + ".zip"))
            finally:
                shutil.rmtree(work, ignore_errors=True)
        names, items = self._detections(None, progress)
        what = {"coco_detections": ("coco", "detections_coco"), "yolo": ("yolo", "detections_yolo"),
                "voc": ("voc", "detections_voc"), "label_studio": ("label_studio", "label_studio")}[fmt]
        return formats.write_box_export(what[0], names, items, self.store.image_dir, out, self.export_name(what[1]),
                                        with_images=with_images, description=self._export_description(),
                                        model_version=Path(str(self.serving.source)).name or "model",
                                        annotated=formats.boxes_as_detections(self.store.boxes(), names))

    def _export_description(self) -> str:
        return f"detections of '{Path(str(self.serving.source)).name}' on {self.data_dir.resolve().name}"

    def _detections(self, score_threshold: float | None, progress: Progress | None) -> tuple[list[str], list]:
        """(the store's labels, [(image row, its detections over them)]) for every stored image."""
        names = self.store.labels()
        if not names:
            raise StoreError("no labels yet: tag some images first")
        rows, items = self.store.images(), []
        for i, row in enumerate(rows):
            if progress:
                progress(i, len(rows))
            items.append((row, self.predictor.predict(self.store.image_dir / row["file"], names, score_threshold)[0]))
        if progress:
            progress(len(rows), len(rows))
        return names, items

    @endpoint(gpu=True)
    def detections_coco(self, score_threshold: float | None = None, *, progress: Progress | None = None) -> dict:
        """The current model's detections on every stored image, over the store's labels, as COCO
        (images by original name, with `info` and `licenses`; scores on the annotations).
        It runs the model on every image: `progress(done, total)` is called before each image and
        once at the end."""
        from . import formats

        names, items = self._detections(score_threshold, progress)
        return formats.coco(names, items, formats.export_names([r for r, _ in items]), self._export_description())


def _clashing_names(entries) -> set[str]:
    """File names a label file gives in two or more folders ('sub1/photo.jpg', 'sub2/photo.jpg')."""
    paths_of: dict[str, set[tuple[str, ...]]] = {}
    for entry in entries:
        parts = path_parts(entry.names[0])
        if parts:
            paths_of.setdefault(parts[-1], set()).add(parts)
    return {base for base, paths in paths_of.items() if len(paths) > 1}


def _import_sentence(file: str, parsed, tags: list, stored: dict, missing: list[str],
                     ambiguous: list[str] = ()) -> str:
    """What one label file held and what its import did, in one sentence."""
    found_tags = sum(1 for e in parsed.entries if e.positives or e.negatives)
    found_box_images = sum(1 for e in parsed.entries if e.boxes)
    found = [f"{parsed.box_count} box(es) on {found_box_images} image(s)"] if parsed.box_count else []
    found += [f"image-level labels for {found_tags} image(s)"] if found_tags else []
    done = []
    if parsed.box_count:
        done.append(f"stored {stored['boxes']} box(es) on {stored['box_images']} image(s)")
    if found_tags:
        done.append(f"tags for {len({h for h, *_ in tags})} image(s)")
    if stored.get("dropped"):
        done.append(f"dropped {stored['dropped']} box(es) empty or outside their image")
    if missing:
        done.append(f"{len(missing)} image(s) not found here (upload them with the file)")
    if ambiguous:
        shown = ", ".join(f"'{n}'" for n in list(dict.fromkeys(ambiguous))[:3])
        done.append(f"{len(ambiguous)} left untagged because several images have that name ({shown}): "
                    "name them with their folders, as in the zip or folder")
    text = f"'{file}' ({parsed.kind}): " + (" and ".join(found) if found else "no labels found")
    text += ("; " + "; ".join(done)) if done else ""
    return text + "".join(f"; {n}" for n in parsed.notes) + "."
