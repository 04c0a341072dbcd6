import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.store import SCHEMA_VERSION, LabelStore, StoreError
from detector import ImageLoadError

ROOT = Path(__file__).resolve().parents[1]


def png(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    return LabelStore(tmp_path / "data")


def test_schema_created_and_reopened(tmp_path):
    s = LabelStore(tmp_path)
    assert s.schema_version == SCHEMA_VERSION == 2  # 2: the boxes table
    assert {"images", "labels", "tags", "boxes"} <= set(s.db.table_names())
    assert s.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    h = s.add_image(png(0))
    s.set_tags(h, ["cat"])
    again = LabelStore(tmp_path)  # opening again migrates nothing and loses nothing
    assert again.tags(h) == {"positives": ["cat"], "negatives": []}


def test_content_hash_deduplicates(store):
    a = store.add_image(png(1), "a.png")
    b = store.add_image(png(1), "copy-of-a.png")
    c = store.add_image(png(2), "c.png")
    assert a == b != c
    assert len(store.images()) == 2 and len(list(store.image_dir.rglob("*.png"))) == 2
    with pytest.raises(ImageLoadError):
        store.add_image(b"garbage")
    assert len(store.images()) == 2


def test_a_deleted_image_goes_with_its_tags_boxes_and_file_and_can_come_back(store):
    a = store.add_image(png(1), "wrong.png")
    b = store.add_image(png(2), "kept.png")
    store.import_tags([(a, ["cat"], ["dog"]), (b, ["cat"], [])], {a: [("cat", (1, 1, 20, 20))]})
    file = store.image_path(a)
    assert file.exists() and len(store.boxes()) == 1
    before = store.revision
    assert store.delete_image(a) == "wrong.png"
    assert [r["hash"] for r in store.images()] == [b] and not file.exists() and store.boxes() == []
    assert store.revision > before and store.tags(b) == {"positives": ["cat"], "negatives": []}
    with pytest.raises(StoreError, match="unknown image .* \\(deleted, or never added\\)"):
        store.delete_image(a)
    for nothing in (None, "", 123):  # over the API: a traceback ("'NoneType' object is not subscriptable")
        with pytest.raises(StoreError, match="no image given"):
            store.delete_image(nothing)
    assert store.add_image(png(1), "wrong.png") == a and store.image_path(a).exists()  # stored anew
    assert store.tags(a) == {"positives": [], "negatives": []}


def test_idempotent_tags_with_negatives_and_nasty_names(store):
    h = store.add_image(png(3))
    nasty = ["chat noir 🐈", "Robert'); DROP TABLE tags;--", 'say "cheese"', "猫"]
    first = store.set_tags(h, nasty, ["dog"])
    second = store.set_tags(h, nasty, ["dog"])
    assert first == second and sorted(first["positives"]) == sorted(nasty) and first["negatives"] == ["dog"]
    assert store.counts()["dog"] == {"positive": 0, "negative": 1}
    assert {"images", "labels", "tags"} <= set(store.db.table_names())
    with pytest.raises(StoreError, match="both present and not present"):
        store.set_tags(h, ["cat"], ["CAT"])
    assert store.tags(h) == second  # failed write changed nothing
    assert store.progress() == (1, 1)


def test_rename_merge_delete(store):
    a, b = store.add_image(png(4)), store.add_image(png(5))
    store.set_tags(a, ["kitty"])
    store.set_tags(b, ["cat"], ["kitty"])
    store.rename_label("kitty", "Cat")  # merge: positive wins
    assert store.tags(a)["positives"] == ["cat"] and store.tags(b) == {"positives": ["cat"], "negatives": []}
    store.rename_label("cat", "feline")
    assert store.labels() == ["feline"]
    store.set_tags(a, ["feline", "pet"])
    store.merge_labels(["pet"], "animal")
    assert store.tags(a)["positives"] == ["animal", "feline"]
    store.delete_label("animal")
    assert store.tags(a)["positives"] == ["feline"]
    with pytest.raises(StoreError):
        store.rename_label("nope", "x")


def test_a_merge_with_a_missing_source_changes_nothing(store):
    """All or nothing: a failed merge neither creates its target nor merges the sources that exist."""
    a = store.add_image(png(6))
    store.set_tags(a, ["pet", "dog"])
    for sources, into in ((["pet", "nope"], "animal"), (["nope"], "ghost"), (["ghost"], "ghost")):
        with pytest.raises(StoreError, match="no label named 'nope'|no label named 'ghost'"):
            store.merge_labels(sources, into)
        assert store.labels() == ["dog", "pet"] and store.tags(a)["positives"] == ["dog", "pet"]
    store.merge_labels(["pet", "dog"], "animal")
    assert store.labels() == ["animal"] and store.tags(a)["positives"] == ["animal"]


def test_export_loads_in_pycocotools_and_train_reads_identical_labels(store):
    from pycocotools.coco import COCO

    from train.data import read_label_dataset

    tags = {store.add_image(png(10 + i), f"{i}.png"): (["mug", "laptop"][: 1 + i % 2], ["kettle"] if i == 2 else [])
            for i in range(4)}
    for h, (pos, neg) in tags.items():
        store.set_tags(h, pos, neg)
    store.add_image(png(99))  # untagged: not exported
    from train.run_dir import RunDir

    path = RunDir(store.data_dir / "run").write_labels(store.export_detic())  # what a training run trains on
    coco = COCO(str(path))
    assert len(coco.imgs) == 4 and {c["name"] for c in coco.cats.values()} == {"mug", "laptop", "kettle"}
    samples, _ = read_label_dataset(path, store.image_dir)
    by_hash = {s.path.stem: (sorted(s.positives), s.negatives) for s in samples}
    assert by_hash == {h: (sorted(p), n) for h, (p, n) in tags.items()}
    rows = store.export_csv().splitlines()
    assert rows[0].startswith("image,labels,negatives") and len(rows) == 5


def test_tag_operations_keep_other_tags_and_csv_round_trips_every_label(store, tmp_path):
    from train.data import read_label_rows

    h = store.add_image(png(30))
    store.add_tags(h, ["salt; pepper", 'say "cheese"'], ["dog"])
    store.add_tags(h, ["dog"])  # switches side, keeps the rest
    store.remove_tags(h, ['say "cheese"', "never there"])
    assert store.tags(h) == {"positives": ["dog", "salt; pepper"], "negatives": []}
    (tmp_path / "labels.csv").write_text(store.export_csv(), encoding="utf-8")
    (row,) = read_label_rows(tmp_path / "labels.csv")
    assert sorted(row[1]) == ["dog", "salt; pepper"]  # the separator inside a label survives


def test_killed_writer_leaves_database_consistent(tmp_path):
    """A process killed inside a write transaction: the database keeps the last committed state."""
    s = LabelStore(tmp_path)
    h = s.add_image(png(7))
    s.set_tags(h, ["before"])
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from app.store import LabelStore
        s = LabelStore({str(tmp_path)!r})
        conn = s.db.conn
        conn.execute("DELETE FROM tags WHERE image = ?", [{h!r}])
        conn.execute("INSERT INTO labels (name) VALUES ('half-written')")
        os._exit(9)  # killed before COMMIT
    """)
    r = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert r.returncode == 9
    again = LabelStore(tmp_path)
    assert again.db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert again.tags(h) == {"positives": ["before"], "negatives": []}
    assert "half-written" not in again.labels()


def test_labels_equal_once_case_is_folded_are_one_label(store):
    """SQLite's NOCASE folds ASCII only: "café" then "CAFÉ", "Straße" then "STRASSE" made two labels
    (both in every export) that the rest of the app treats as one."""
    h = store.add_image(png(7))
    store.add_tags(h, ["café", "Straße", "cat"])
    store.add_tags(h, ["CAFÉ", "STRASSE", "CAT"])
    assert store.labels() == ["café", "cat", "Straße"]
    store.add_tags(h, [], ["strasse"])  # the same label, now "not present"
    assert store.tags(h) == {"positives": ["café", "cat"], "negatives": ["Straße"]}
