"""The label store: images by content hash + image-level tags in SQLite (sqlite-utils, WAL).

    DATA_DIR/labels.db        schema below, created on open and migrated forward
    DATA_DIR/images/ab/abcd…  each distinct image stored once, named by its SHA-256

Tags are image-level: (image, label, positive|negative); boxes (image, label, x1, y1, x2, y2 in the
image's pixels) come from imported box files, and a box's label is a positive tag of its image. Every write is one transaction, so a
process killed mid-write leaves the previous consistent state. Label names are unique
case-insensitively; renaming onto an existing name merges. Import/export speak Detic's
image-label JSON (COCO `images` with `pos_category_ids`/`neg_category_ids`), CSV and
one-folder-per-class trees. No Gradio here.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import threading
import time
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import sqlite_utils
from PIL import Image

from detector.files import atomic_write
from detector.images import IMAGE_SUFFIXES, ImageLoadError, load_image
from detector.vocabulary import MAX_NAMES, clean_name
from train.data import join_labels, spreadsheet_safe

SCHEMA_VERSION = 2


def path_parts(name: str) -> tuple[str, ...]:
    """A name as given in a zip, a folder or a label file, as its path components ('./a\\b.jpg' ->
    ('a', 'b.jpg')), in Unicode's composed form (macOS writes 'café' decomposed)."""
    name = unicodedata.normalize("NFC", str(name))
    return tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))


def best_named(name: str, candidates: Iterable[tuple[str, str]]) -> tuple[list[str], bool]:
    """(the hashes among `candidates` (stored or given name, hash) that `name` means, whether the
    match is only weak). A candidate fits when its path and `name` end the same way, one being the
    tail of the other ('photo.jpg' and 'a/photo.jpg'; not 'a/photo.jpg' and 'b/photo.jpg'). Best:
    names holding all of `name` (then sharing the most components, then equal); weak: names that
    hold only its end (a stored bare 'photo.jpg' for 'photos/sub1/photo.jpg', which the caller
    takes only when nothing else has that path). Two or more hashes: the name is ambiguous (a bare
    'photo.jpg' when a/ and b/ each hold one), and the caller must not guess."""
    want, best, hashes = path_parts(name), None, []
    folded = tuple(p.casefold() for p in want)
    for given, h in candidates:
        got = path_parts(given or "")
        n = min(len(want), len(got))
        if not n or folded[-n:] != tuple(p.casefold() for p in got[-n:]):  # any case ('IMG_1.JPG' is 'img_1.jpg')
            continue
        rank = (len(got) >= len(want), n, len(got) == len(want), want[-n:] == got[-n:])  # same case first
        if best is None or rank > best:
            best, hashes = rank, []
        if rank == best and h not in hashes:
            hashes.append(h)
    return hashes, best is not None and not best[0]


class StoreError(ValueError):
    """A request the store cannot honour (unknown image/label, bad file); nothing was changed."""


def _clean_label(name: str) -> str:
    try:
        return clean_name(name)
    except ValueError as e:
        raise StoreError(str(e).replace("a name", "a label")) from None


class LabelStore:
    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.image_dir = self.data_dir / "images"
        self.image_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "labels.db"
        self._local = threading.local()
        self._revision = 0  # counts this process's writes: see `revision`
        self._revision_lock = threading.Lock()
        self.db.enable_wal()
        self._migrate()

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection (SQLite connections must not cross threads; WAL lets them
        read and write side by side, and busy_timeout makes a writer wait rather than fail)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite_utils.Database(self.path)
            db.conn.execute("PRAGMA busy_timeout = 10000")
            db.conn.execute("PRAGMA foreign_keys = ON")
            self._local.db = db
        return db

    # --- schema ----------------------------------------------------------------------------
    def _migrate(self) -> None:
        version = self.db.conn.execute("PRAGMA user_version").fetchone()[0]
        if version < 1:
            with self.db.conn:
                self.db.conn.executescript("""
                    CREATE TABLE IF NOT EXISTS images (
                        hash TEXT PRIMARY KEY, file TEXT NOT NULL, original_name TEXT,
                        width INTEGER NOT NULL, height INTEGER NOT NULL, added REAL NOT NULL);
                    CREATE TABLE IF NOT EXISTS labels (
                        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE);
                    CREATE TABLE IF NOT EXISTS tags (
                        image TEXT NOT NULL REFERENCES images(hash) ON DELETE CASCADE,
                        label INTEGER NOT NULL REFERENCES labels(id) ON DELETE CASCADE,
                        positive INTEGER NOT NULL CHECK (positive IN (0, 1)),
                        updated REAL NOT NULL, PRIMARY KEY (image, label));
                    CREATE INDEX IF NOT EXISTS tags_by_label ON tags(label);
                    PRAGMA user_version = 1;
                """)
        if version < 2:
            with self.db.conn:
                self.db.conn.executescript("""
                    CREATE TABLE IF NOT EXISTS boxes (
                        id INTEGER PRIMARY KEY,
                        image TEXT NOT NULL REFERENCES images(hash) ON DELETE CASCADE,
                        label INTEGER NOT NULL REFERENCES labels(id) ON DELETE CASCADE,
                        x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
                        updated REAL NOT NULL);
                    CREATE INDEX IF NOT EXISTS boxes_by_image ON boxes(image);
                    PRAGMA user_version = 2;
                """)

    @contextlib.contextmanager
    def _writing(self):
        """One write transaction, taken at once (BEGIN IMMEDIATE): what it reads inside (a label's id)
        cannot be deleted by another writer before it writes. When it commits, `revision` moves on."""
        conn = self.db.conn
        if conn.in_transaction:  # inside an outer write: that one commits
            yield
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        with self._revision_lock:
            self._revision += 1

    @property
    def revision(self) -> int:
        """Changes whenever this store's images, labels or tags may have changed (a cheap way for
        an open page to ask whether what it shows is stale)."""
        return self._revision

    @property
    def schema_version(self) -> int:
        return self.db.conn.execute("PRAGMA user_version").fetchone()[0]

    # --- images -----------------------------------------------------------------------------
    def add_image(self, source, original_name: str | None = None) -> str:
        """Store an image once (by content hash) and return its hash. Raises ImageLoadError."""
        if isinstance(source, (str, Path)):
            data = Path(source).read_bytes() if Path(source).is_file() else None
            if data is None:
                raise ImageLoadError(f"image file not found: '{source}'")
            original_name = original_name or Path(source).name
        elif isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:  # PIL image or array: store as PNG
            buf = io.BytesIO()
            Image.fromarray(load_image(source).array).save(buf, format="PNG")
            data = buf.getvalue()
        loaded = load_image(data)  # validates before anything is written
        digest = hashlib.sha256(data).hexdigest()
        if self.db["images"].count_where("hash = ?", [digest]):
            return digest
        suffix = (Path(original_name).suffix.lower() if original_name else "") or ".png"
        if suffix not in IMAGE_SUFFIXES:
            suffix = ".img"
        rel = Path(digest[:2]) / f"{digest}{suffix}"
        atomic_write(self.image_dir / rel, data)
        h, w = loaded.original_size
        with self._writing():
            self.db["images"].insert({"hash": digest, "file": str(rel), "original_name": original_name,
                                      "width": w, "height": h, "added": time.time()}, ignore=True)
        return digest

    def delete_image(self, image: str) -> str:
        """Remove an image, its tags and boxes (cascade) and its file; returns its name. The file
        goes inside the transaction: an upload of the same bytes waits for it, then stores anew."""
        with self._writing():
            row = self._image(image)
            self.db.conn.execute("DELETE FROM images WHERE hash = ?", [row["hash"]])
            (self.image_dir / row["file"]).unlink(missing_ok=True)
        return row["original_name"] or row["hash"][:12]

    def image_path(self, image: str) -> Path:
        row = self._image(image)
        return self.image_dir / row["file"]

    def _image(self, image: str) -> dict:
        if not isinstance(image, str) or not image:
            raise StoreError("no image given (an image's hash, as /images lists them)")
        rows = list(self.db["images"].rows_where("hash = ?", [image]))
        if not rows:
            raise StoreError(f"unknown image {image[:12]!r}" + ("…" if len(image) > 12 else "") + " (deleted, or never added)")
        return rows[0]

    def images(self) -> list[dict]:
        """All images, oldest first, each with its positive/negative label names."""
        tags: dict[str, dict[str, list[str]]] = {}
        for r in self.db.query("SELECT t.image, l.name, t.positive FROM tags t JOIN labels l ON l.id = t.label "
                               "ORDER BY l.name"):
            tags.setdefault(r["image"], {"positives": [], "negatives": []})[
                "positives" if r["positive"] else "negatives"].append(r["name"])
        out = []
        for row in self.db.query("SELECT * FROM images ORDER BY added, hash"):
            out.append({**row, **tags.get(row["hash"], {"positives": [], "negatives": []})})
        return out

    # --- labels and tags --------------------------------------------------------------------
    def _label_id(self, name: str, create: bool = True) -> int | None:
        name = _clean_label(name)
        row = self.db.conn.execute("SELECT id FROM labels WHERE name = ? COLLATE NOCASE", [name]).fetchone()
        if row:
            return row[0]
        # SQLite's NOCASE folds ASCII only: "CAFÉ" / "café" and "STRASSE" / "Straße" are one label as
        # Python folds case (as `_clean_tags` already judged them), so the non-ASCII ones are compared here.
        key = name.casefold()
        where = "" if not name.isascii() else " WHERE name GLOB '*[^ -~]*'"  # ASCII meets only non-ASCII ones here
        for label_id, stored in self.db.conn.execute(f"SELECT id, name FROM labels{where}"):
            if stored.casefold() == key:
                return label_id
        if not create:
            return None
        count = self.db.conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
        if count >= MAX_NAMES:  # every label is a name of the exports' and training's vocabulary
            raise StoreError(f"the dataset already has {count:,} labels, the most one vocabulary may hold: "
                             f"'{name}' was not added (delete or merge unused labels on the Dataset tab)")
        return self.db.conn.execute("INSERT INTO labels (name) VALUES (?)", [name]).lastrowid

    def labels(self) -> list[str]:
        return [r["name"] for r in self.db.query("SELECT name FROM labels ORDER BY name COLLATE NOCASE")]

    def labels_by_age(self) -> list[str]:
        """Labels in the order they were first created (a rename keeps a label's place): the Tag
        tab's number keys, which stay with a label as others arrive."""
        return [r["name"] for r in self.db.query("SELECT name FROM labels ORDER BY id")]

    def _clean_tags(self, positives: Iterable[str], negatives: Iterable[str]) -> tuple[list[str], list[str]]:
        pos = list(dict.fromkeys(_clean_label(n) for n in positives))
        neg = list(dict.fromkeys(_clean_label(n) for n in negatives))
        both = {n.casefold() for n in pos} & {n.casefold() for n in neg}
        if both:
            raise StoreError(f"a label cannot be both present and not present: {', '.join(sorted(both))}")
        return pos, neg

    def _upsert_tags(self, image: str, pos: list[str], neg: list[str], now: float) -> None:
        for names, positive in ((pos, 1), (neg, 0)):
            for n in names:
                self.db.conn.execute(
                    "INSERT INTO tags VALUES (?, ?, ?, ?) ON CONFLICT (image, label) "
                    "DO UPDATE SET positive = excluded.positive, updated = excluded.updated",
                    [image, self._label_id(n), positive, now])

    def add_tags(self, image: str, positives: Iterable[str] = (), negatives: Iterable[str] = ()) -> dict:
        """Add tags (a name already on the other side switches side). An operation, not a replacement:
        two people adding tags to one image at once both keep theirs."""
        self._image(image)
        pos, neg = self._clean_tags(positives, negatives)
        with self._writing():
            self._upsert_tags(image, pos, neg, time.time())
        return self.tags(image)

    def remove_tags(self, image: str, names: Iterable[str]) -> dict:
        """Remove these names from the image's tags (present or not present); others stay."""
        self._image(image)
        with self._writing():
            for n in names:
                label = self._label_id(n, create=False)
                if label is not None:
                    self.db.conn.execute("DELETE FROM tags WHERE image = ? AND label = ?", [image, label])
        return self.tags(image)

    def set_tags(self, image: str, positives: Iterable[str] = (), negatives: Iterable[str] = ()) -> dict:
        """Replace the image's tags with exactly these (one transaction; for imports and scripts —
        the app's editors use `add_tags` / `remove_tags`)."""
        self._image(image)
        pos, neg = self._clean_tags(positives, negatives)
        with self._writing():
            self.db.conn.execute("DELETE FROM tags WHERE image = ?", [image])
            self._upsert_tags(image, pos, neg, time.time())
        return self.tags(image)

    def tags(self, image: str) -> dict:
        self._image(image)
        rows = self.db.query("SELECT l.name, t.positive FROM tags t JOIN labels l ON l.id = t.label "
                             "WHERE t.image = ? ORDER BY l.name", [image])
        out = {"positives": [], "negatives": []}
        for r in rows:
            out["positives" if r["positive"] else "negatives"].append(r["name"])
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """Per label: number of images tagged present / not present."""
        rows = self.db.query("SELECT l.name, SUM(t.positive) AS pos, SUM(1 - t.positive) AS neg FROM labels l "
                             "LEFT JOIN tags t ON t.label = l.id GROUP BY l.id ORDER BY l.name COLLATE NOCASE")
        return {r["name"]: {"positive": int(r["pos"] or 0), "negative": int(r["neg"] or 0)} for r in rows}

    def progress(self) -> tuple[int, int]:
        """(images with at least one tag, all images)."""
        tagged = self.db.conn.execute("SELECT COUNT(DISTINCT image) FROM tags").fetchone()[0]
        return tagged, self.db["images"].count

    def rename_label(self, old: str, new: str) -> None:
        """Rename; if `new` exists (any case) the two labels are merged (positive wins)."""
        new = _clean_label(new)
        with self._writing():  # read and write under one lock: nobody deletes `old` in between
            old_id = self._label_id(old, create=False)
            if old_id is None:
                raise StoreError(f"no label named {old!r}")
            target = self._label_id(new, create=False)
            if target is None or target == old_id:
                self.db.conn.execute("UPDATE labels SET name = ? WHERE id = ?", [new, old_id])
                return
            self.db.conn.execute("UPDATE boxes SET label = ? WHERE label = ?", [target, old_id])
            self.db.conn.execute(
                "INSERT INTO tags (image, label, positive, updated) SELECT image, ?, positive, updated FROM tags "
                "WHERE label = ? ON CONFLICT (image, label) DO UPDATE SET positive = MAX(positive, excluded.positive)",
                [target, old_id])
            self.db.conn.execute("DELETE FROM labels WHERE id = ?", [old_id])

    def merge_labels(self, sources: Iterable[str], into: str) -> None:
        """Merge the source labels into `into` (created if needed): all of it in one transaction,
        or nothing when a source does not exist (`into` is not created either: a failed merge left
        an empty label behind, listed everywhere)."""
        into = _clean_label(into)
        sources = list(sources)
        with self._writing():
            missing = [s for s in sources if self._label_id(s, create=False) is None]
            if missing:
                raise StoreError(f"no label named {missing[0]!r}" + (f" (nor {len(missing) - 1} more)"
                                                                     if len(missing) > 1 else ""))
            if self._label_id(into, create=False) is None:
                self._label_id(into)
            for s in sources:
                if _clean_label(s).casefold() != into.casefold():
                    self.rename_label(s, into)

    def delete_label(self, name: str) -> None:
        with self._writing():
            label_id = self._label_id(name, create=False)
            if label_id is None:
                raise StoreError(f"no label named {name!r}")
            self.db.conn.execute("DELETE FROM labels WHERE id = ?", [label_id])

    # --- export / import --------------------------------------------------------------------
    def export_detic(self, file_names: dict[str, str] | None = None) -> dict:
        """Detic image-label JSON: COCO `images` with pos/neg_category_ids, no annotations.
        `file_name`: the stored file (relative to `image_dir`), or `file_names[hash]` when given."""
        names = self.labels()
        cat = {n: i + 1 for i, n in enumerate(names)}
        images = []
        for i, row in enumerate(self.images()):
            if not row["positives"] and not row["negatives"]:
                continue
            images.append({"id": i + 1, "file_name": file_names[row["hash"]] if file_names else row["file"],
                           "width": row["width"], "height": row["height"],
                           "original_name": row["original_name"], "sha256": row["hash"],
                           "pos_category_ids": [cat[n] for n in row["positives"]],
                           "neg_category_ids": [cat[n] for n in row["negatives"]]})
        return {"info": {"description": "image-level labels", "schema": "detic"}, "images": images,
                "annotations": [], "categories": [{"id": cat[n], "name": n} for n in names]}

    def export_csv(self, file_names: dict[str, str] | None = None) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["image", "labels", "negatives", "original_name"])
        for row in self.images():
            if row["positives"] or row["negatives"]:
                cells = [file_names[row["hash"]] if file_names else row["file"], join_labels(row["positives"]),
                         join_labels(row["negatives"]), row["original_name"] or ""]
                w.writerow([spreadsheet_safe(c) for c in cells])
        return buf.getvalue()

    def find_image(self, name: str, sha256: str | None = None) -> str | None:
        """Hash of a stored image matching a label file's entry: by sha256, by stored file name
        ("ab/<sha256>.png", any case), or by original name (`best_named`: folders included,
        'b/photo.jpg' is not 'a/photo.jpg'); None when a bare name fits two images. (An import of
        many entries reads `name_index` once instead.)"""
        if sha256 and self.has_image(sha256):
            return sha256
        base = path_parts(name)[-1:]
        if not base:
            return None
        by_base, by_file = self.name_index()
        found, _ = best_named(name, by_base.get(base[0].casefold(), []))
        return by_file.get(base[0].lower()) or (found[0] if len(found) == 1 else None)

    def name_index(self) -> tuple[dict[str, list[tuple[str, str]]], dict[str, str]]:
        """Every stored image by name, for an import of many entries (one query, not one per entry:
        3,000 names against 3,000 images took 14 s one by one): ({file name, case-folded: [(original
        name, hash)]}, {stored file's name, lower case: hash})."""
        by_base: dict[str, list[tuple[str, str]]] = {}
        by_file: dict[str, str] = {}
        for original, h, file in self.db.conn.execute("SELECT original_name, hash, file FROM images ORDER BY added"):
            if parts := path_parts(original or ""):
                by_base.setdefault(parts[-1].casefold(), []).append((original, h))
            by_file.setdefault(Path(file).name.lower(), h)
        return by_base, by_file

    def has_image(self, image: str) -> bool:
        return bool(self.db["images"].count_where("hash = ?", [image]))

    def import_tags(self, rows: list[tuple[str, list[str], list[str]]],
                    boxes: dict[str, list[tuple[str, tuple[float, float, float, float]]]] | None = None) -> dict:
        """(image hash, positives, negatives) and boxes {image hash: [(label, (x1, y1, x2, y2) in
        pixels)]} added in ONE transaction: all of a file or none of it. An image's boxes replace
        the boxes it had (importing a file twice stores them once); each box's label becomes a
        positive tag. Boxes are clipped to the image; empty ones are dropped.
        -> {"boxes": stored, "dropped": boxes dropped, "box_images": images with boxes stored}."""
        merged: dict[str, tuple[list[str], list[str]]] = {}
        for h, pos, neg in [(h, *self._clean_tags(pos, neg)) for h, pos, neg in rows]:  # a row's own conflict: an error
            p, n = merged.setdefault(h, ([], []))
            p += pos
            n += neg
        kept: dict[str, list[tuple[str, tuple[float, ...]]]] = {}
        dropped = 0
        for h, items in (boxes or {}).items():
            row = self._image(h)
            good = []
            for name, box in items:
                clipped = _clip_box(box, row["width"], row["height"])
                if clipped is None:
                    dropped += 1
                else:
                    good.append((_clean_label(name), clipped))
            kept[h] = good
            merged.setdefault(h, ([], []))[0].extend(name for name, _ in good)
        cleaned = [(h, *self._clean_tags(pos, [x for x in neg if x.casefold() not in {p.casefold() for p in pos}]))
                   for h, (pos, neg) in merged.items()]
        now = time.time()
        with self._writing():
            for h, pos, neg in cleaned:
                self._image(h)
                current = self.tags(h)
                keep_neg = [n for n in dict.fromkeys([*current["negatives"], *neg])
                            if n.casefold() not in {x.casefold() for x in pos}]
                self._upsert_tags(h, pos, keep_neg, now)
            for h, items in kept.items():
                self.db.conn.execute("DELETE FROM boxes WHERE image = ?", [h])
                for name, (x1, y1, x2, y2) in items:
                    self.db.conn.execute("INSERT INTO boxes (image, label, x1, y1, x2, y2, updated) "
                                         "VALUES (?, ?, ?, ?, ?, ?, ?)", [h, self._label_id(name), x1, y1, x2, y2, now])
        return {"boxes": sum(len(v) for v in kept.values()), "dropped": dropped,
                "box_images": sum(1 for v in kept.values() if v)}

    # --- boxes ------------------------------------------------------------------------------
    def boxes(self, image: str | None = None) -> list[dict]:
        """Stored boxes (of one image, or all), in insertion order: {image, label, box: [x1, y1, x2, y2]}."""
        where, args = ("WHERE b.image = ?", [image]) if image else ("", [])
        rows = self.db.query(f"SELECT b.image, l.name, b.x1, b.y1, b.x2, b.y2 FROM boxes b JOIN labels l "
                             f"ON l.id = b.label {where} ORDER BY b.id", args)
        return [{"image": r["image"], "label": r["name"], "box": [r["x1"], r["y1"], r["x2"], r["y2"]]} for r in rows]

    def box_count(self) -> int:
        return self.db["boxes"].count

    def export_boxes_coco(self, file_names: dict[str, str] | None = None) -> dict:
        """The stored boxes as COCO detection JSON (the images that have boxes; `file_name`: the stored
        file, relative to `image_dir`, or `file_names[hash]`), what a training run reads as box data."""
        per_image: dict[str, list[dict]] = {}
        for b in self.boxes():
            per_image.setdefault(b["image"], []).append(b)
        names = sorted({b["label"] for bs in per_image.values() for b in bs}, key=str.casefold)
        cat = {n: i + 1 for i, n in enumerate(names)}
        images, anns = [], []
        for i, row in enumerate((r for r in self.images() if r["hash"] in per_image), 1):
            images.append({"id": i, "file_name": file_names[row["hash"]] if file_names else row["file"],
                           "width": row["width"], "height": row["height"], "sha256": row["hash"],
                           "original_name": row["original_name"]})
            for b in per_image[row["hash"]]:
                x1, y1, x2, y2 = b["box"]
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat[b["label"]],
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        return {"info": {"description": "stored boxes", "schema": "coco"}, "images": images, "annotations": anns,
                "categories": [{"id": cat[n], "name": n} for n in names]}


def _clip_box(box, width: int, height: int) -> tuple[float, float, float, float] | None:
    """xyxy clipped to the image, or None when not four finite numbers or empty after clipping."""
    import math

    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    return x1, y1, x2, y2
