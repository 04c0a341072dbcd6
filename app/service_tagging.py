"""Images, tags and the Tag queue: adding images (files, zips, server folders), tagging and
untagging, and the queue views (`tag_view`, `queue_filter`). A part of `AppService`."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable
from pathlib import Path

from detector.images import IMAGE_SUFFIXES, load_image
from detector.vocabulary import parse_vocabulary

from .service_base import _nonempty, _upload_path, endpoint
from .store import StoreError, path_parts

HOTKEYS = 9  # the Tag tab's number keys 1-9: the first nine labels created (`tag_view`'s `keys`)

MAX_ZIP_MEMBERS = 5000
MAX_ZIP_MEMBER_BYTES = 50 * 1024 * 1024
LABEL_LIKE = (".json", ".jsonl", ".csv", ".txt", ".yaml", ".yml", ".xml")


def _names_inside(paths) -> dict[str, str]:
    """{a zip member's path: the image's name}: its path without the folders every image sits in
    ('photos/a/x.jpg', 'photos/b/x.jpg' -> 'a/x.jpg', 'b/x.jpg'; an export's 'images/x.jpg' -> 'x.jpg'),
    so images of one name in different folders stay apart and names read as in the dataset."""
    parts = {p: path_parts(p) for p in paths}
    common = 0
    folders = [q[:-1] for q in parts.values()]
    while folders and all(len(f) > common and f[common] == folders[0][common] for f in folders):
        common += 1
    return {p: "/".join(q[common:]) for p, q in parts.items()}


class TaggingMixin:
    """Images, tags and queue views; uses `self.store` and `self.policy` (set by `AppService`)."""

    @endpoint(api=False)
    def add_images(self, files: list, names: list[str] | None = None) -> dict:
        """Add image files, bytes or zip archives; returns {added: [hashes], new: [hashes not in the
        store before], duplicates: [names of images already there or given twice], skipped: [reasons],
        names: {the name each file was given as: its hash} (a duplicate keeps its stored name, and
        a label file beside it still finds it by the name it came with)}. A file's name is its own
        unless `names` gives one (a folder's files: their paths inside it); a zip's images are
        named by their paths inside the zip, so 'a/photo.jpg' and 'b/photo.jpg' stay apart."""
        before = {r["hash"] for r in self.store.images()}
        added, skipped = [], []  # added: (hash, the name it was given as)
        for i, f in enumerate(files or []):
            path = _upload_path(f)
            if path is not None and path.suffix.lower() == ".zip":
                a, s = self._add_zip(path)
                added += a
                skipped += s
                continue
            name = names[i] if names else path.name if path else "upload"
            try:
                added.append((self.store.add_image(f if path is None else path, name), name))
            except (ValueError, OSError) as e:  # one bad file must not stop the others
                skipped.append(f"{name}: {e}")
        seen, new, duplicates = set(), [], []
        for h, given in added:
            if h in before or h in seen:
                stored = self.store._image(h)["original_name"] or h[:12]
                # the file that was skipped, and what it repeats when that has another name
                duplicates.append(given if given == stored else f"{given} (same as {stored})")
            else:
                new.append(h)
            seen.add(h)
        return {"added": list(dict.fromkeys(h for h, _ in added)), "new": new, "duplicates": duplicates,
                "skipped": skipped, "names": {given: h for h, given in added}}

    def _add_zip(self, path: Path) -> tuple[list[tuple[str, str]], list[str]]:
        added, skipped = [], []
        try:
            with zipfile.ZipFile(path) as z:
                # macOS's resource forks (__MACOSX/, ._photo.jpg) are not images: left out unreported
                files = [m for m in z.infolist() if not m.is_dir()
                         and not any(p == "__MACOSX" or p.startswith("._") for p in path_parts(m.filename))]
                members = [m for m in files if Path(m.filename).suffix.lower() in IMAGE_SUFFIXES]
                # the label files an export or a dataset holds beside its images are not news
                others = [path_parts(m.filename)[-1] for m in files if m not in members
                          and Path(m.filename).suffix.lower() not in LABEL_LIKE]
                if others:
                    shown = ", ".join(f"'{n}'" for n in others[:3]) + (", …" if len(others) > 3 else "")
                    nested = " (a zip inside the zip is not opened)" if any(n.lower().endswith(".zip") for n in others) else ""
                    skipped.append(f"{path.name}: {len(others)} file(s) that are not images left out: {shown}{nested}")
                if len(members) > MAX_ZIP_MEMBERS:
                    return [], [f"{path.name}: more than {MAX_ZIP_MEMBERS} images"]
                names = _names_inside(m.filename for m in members)
                for m in members:
                    if m.file_size > MAX_ZIP_MEMBER_BYTES:
                        skipped.append(f"{m.filename}: larger than {MAX_ZIP_MEMBER_BYTES // 2**20} MB")
                        continue
                    name = names[m.filename]
                    try:
                        added.append((self.store.add_image(z.read(m), name), name))
                    except (ValueError, OSError) as e:
                        skipped.append(f"{m.filename}: {e}")
        except zipfile.BadZipFile:
            skipped.append(f"{path.name}: not a valid zip file")
        return added, skipped

    @endpoint()
    def add_folder(self, folder: str) -> dict:
        """Add every image under a server folder the operator allows (`APP_ALLOWED_DIRS`)."""
        if not str(folder or "").strip():
            raise StoreError("type a folder on the server: one the operator allows (APP_ALLOWED_DIRS) or one inside it")
        folder_path = self.policy.server_path(folder, "folder")
        if not folder_path.is_dir():
            typed = str(folder) if len(str(folder)) <= 80 else "…" + str(folder)[-79:]  # as typed, like the refusals
            raise StoreError(f"'{typed}' is not a folder on the server")
        files, outside = self.policy.allowed_files(folder_path)  # links pointing outside: skipped, reported
        result = self.add_images(files, [f.relative_to(folder_path).as_posix() for f in files])
        return {**result, "skipped": [*result["skipped"], *outside]}

    @endpoint(api=False)
    def stored_tags(self, image) -> str:
        """The present tags stored for an uploaded image that is already in the store (the same
        bytes), comma separated; "" when it is not stored or has none. The Assign tab fills them in
        (it kept the previous image's tags, or its example, for any image)."""
        path = _upload_path(image) if image is not None else None
        if path is None or not path.is_file():
            return ""
        try:
            return ", ".join(self.store.tags(hashlib.sha256(path.read_bytes()).hexdigest())["positives"])
        except StoreError:
            return ""

    @endpoint(api=False)
    def image_tags(self, image_hash: str) -> dict:
        """One image's tags as stored: {"positives", "negatives"} (the Tag editor drops from an edit
        what the store already holds, so a change fired by the page catching up is no edit)."""
        return self.store.tags(image_hash)

    @endpoint()
    def images(self) -> list[dict]:
        """Every stored image, oldest first: hash, original name, size, positive/negative tags."""
        return [{k: r[k] for k in ("hash", "original_name", "width", "height", "positives", "negatives")}
                for r in self.store.images()]

    @endpoint()
    def tag_view(self, index: int = 0, show: str = "all", backward: bool = False, vocabulary: str | list[str] = "") -> dict:
        """The tagging queue at `index` (clamped): the image, its tags, the label list and progress.
        `show` restricts the queue to the images that match (`queue_filter`): when the image at
        `index` does not, the nearest one after it that does is shown (before it with `backward`;
        failing that, the nearest the other way). `matches`: how many images match; `position`:
        the shown image's place among them (1-based); `image` is None when none matches.
        `vocabulary`: the names Suggest uses (empty = the labels), `suggest_names` as parsed; a
        "suggestion:NAME" filter reads what the suggestion pass (`start_suggestions`) has found so
        far with them and the live model, and never waits for it: `pending` counts the images it has
        not looked at yet (they match nothing until it has), `running` whether it is looking now,
        `suggestion_error` why the last pass stopped, if it failed. `keys`: the labels number keys
        1-9 toggle, in the order the labels were created (a label keeps its key as others arrive)."""
        rows = self.store.images()
        tagged, total = self.store.progress()
        show = (show or "all").strip() or "all"
        suggested, pending, names, state = None, 0, [], None
        try:
            names = self._suggest_vocabulary(vocabulary)
        except ValueError:
            if show.startswith("suggestion:"):
                raise
        if show.startswith("suggestion:"):
            suggested, pending = self._found_suggestions(names, rows)
            state = self._pass_of(names)
        matches = queue_filter(show, suggested)
        matching = [i for i, r in enumerate(rows) if matches(r)]
        view = {"index": 0, "count": len(rows), "tagged": tagged, "labels": self.store.labels(),
                "keys": self.store.labels_by_age()[:HOTKEYS], "image": None,
                "show": show, "matches": len(matching), "position": None, "suggest_names": names,
                "pending": pending, "running": bool(state and state.running and pending),
                "suggestion_error": state.error if state else ""}
        if matching:
            index = max(0, min(int(index or 0), len(rows) - 1))
            after, before = [i for i in matching if i >= index], [i for i in reversed(matching) if i <= index]
            index = ((before or after) if backward else (after or before))[0]
            row = rows[index]
            view.update(index=index, position=matching.index(index) + 1,
                        image={"hash": row["hash"], "name": row["original_name"] or row["hash"][:12],
                               "positives": row["positives"], "negatives": row["negatives"]})
        return view

    @endpoint(api=False)
    def image_preview(self, image_hash: str, max_side: int = 1024):
        """A stored image as an RGB array for display (the data folder itself is never served)."""
        return load_image(self.store.image_path(image_hash), max_side=max_side).array

    @endpoint()
    def first_untagged(self) -> int:
        """Index of the first image with no tags (0 when all are tagged)."""
        return next((i for i, r in enumerate(self.store.images()) if not r["positives"] and not r["negatives"]), 0)

    @endpoint()
    def tag(self, image_hash: str, positives: str | list[str], negatives: str | list[str] = "") -> dict:
        """Add tags to an image (present / not present); other tags stay. Returns its tags as stored."""
        pos = parse_vocabulary(positives) if _nonempty(positives) else []
        neg = parse_vocabulary(negatives) if _nonempty(negatives) else []
        return self.store.add_tags(image_hash, pos, neg)

    @endpoint()
    def delete_image(self, image_hash: str) -> str:
        """Remove an image with its tags and boxes (a wrong upload). Runs already started keep the
        tags they were given; one still reading its images skips this one."""
        return f"deleted {self.store.delete_image(image_hash)}"

    @endpoint()
    def untag(self, image_hash: str, names: str | list[str]) -> dict:
        """Remove tags from an image; other tags stay. Returns its tags as stored."""
        return self.store.remove_tags(image_hash, parse_vocabulary(names) if _nonempty(names) else [])


def queue_filter(show: str, suggested: dict[str, tuple[str, ...]] | None = None) -> Callable[[dict], bool]:
    """Which stored images (rows) the Tag queue shows: "all", "untagged" (no tags at all),
    "label:NAME" (tagged present with NAME; a label that no longer exists matches none) or
    "suggestion:NAME": images to review for NAME, those where the model suggests it (`suggested`:
    {hash: names}, from `AppService.find_suggestions`) and that have no tag NAME yet, present or not."""
    show = (show or "all").strip() or "all"
    if show == "all":
        return lambda row: True
    if show == "untagged":
        return lambda row: not row["positives"] and not row["negatives"]
    if show.startswith("label:"):
        name = show[len("label:"):].casefold()  # labels compare case-insensitively
        return lambda row: name in {t.casefold() for t in row["positives"]}
    if show.startswith("suggestion:"):
        name = show[len("suggestion:"):].strip().casefold()  # labels compare case-insensitively
        found = {h: {n.casefold() for n in names} for h, names in (suggested or {}).items()}
        return lambda row: name in found.get(row["hash"], ()) and \
            name not in {t.casefold() for t in (*row["positives"], *row["negatives"])}
    raise ValueError(f"unknown filter {show!r}: all, untagged, label:NAME or suggestion:NAME")
