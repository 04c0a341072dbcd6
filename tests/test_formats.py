"""Exports other tools read (YOLO, Pascal VOC, COCO, Label Studio; images zipped under their
original names) and box-label imports (COCO, YOLO, Label Studio) into the store."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import supervision as sv
from PIL import Image

from app.formats import export_names
from app.service import AppService

BOXES = [[2.0, 3.0, 20.0, 25.0], [5.0, 6.0, 30.0, 28.0]]  # what the fake model finds, class 0 and 1


def image_bytes(seed: int, size=(40, 32), fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def fake_predict(images, vocabulary, score_threshold=None, *args, **kwargs):
    names = list(vocabulary)
    k = min(2, len(names))
    return [sv.Detections(xyxy=np.array(BOXES[:k], dtype=np.float32), confidence=np.array([0.9, 0.6][:k]),
                          class_id=np.arange(k), data={"class_name": np.array(names[:k])})]


@pytest.fixture
def service(tmp_path, tiny_predictor, monkeypatch):
    s = AppService(tmp_path / "data", predictor=tiny_predictor)
    monkeypatch.setattr(tiny_predictor, "predict", fake_predict)
    return s


@pytest.fixture
def filled(service):
    """Three tagged images, two of them both named 'a.png' (one in a folder), one JPEG."""
    hashes = [service.store.add_image(image_bytes(1), "a.png"), service.store.add_image(image_bytes(2), "dir/a.png"),
              service.store.add_image(image_bytes(3, fmt="JPEG"), "photo one.jpg")]
    for h in hashes:
        service.store.set_tags(h, ["mug"], ["laptop"])
    return service, hashes


def unzip(path: str | Path, where: Path) -> Path:
    with zipfile.ZipFile(path) as z:
        z.extractall(where)
    return where


def test_export_names_are_original_and_unique_by_stem():
    rows = [{"hash": "1" * 64, "file": "11/x.png", "original_name": "a.png"},
            {"hash": "2" * 64, "file": "22/x.jpg", "original_name": "sub/A.jpg"},
            {"hash": "3" * 64, "file": "33/x.png", "original_name": None},
            {"hash": "4" * 64, "file": "44/x.png", "original_name": "notes.txt"}]
    names = export_names(rows)
    assert names == {"1" * 64: "a.png", "2" * 64: "A-22222222.jpg", "3" * 64: "333333333333.png",
                     "4" * 64: "notes.txt.png"}


@pytest.mark.parametrize("fmt", ["yolo", "voc", "coco_detections"])
def test_box_exports_with_images_load_back_into_supervision(filled, tmp_path, fmt):
    service, hashes = filled
    path = Path(service.export_labels(fmt, True))
    assert path.suffix == ".zip"
    root = unzip(path, tmp_path / "out")
    names = sorted(p.name for p in (root / "images").iterdir())
    assert names == ["a-" + hashes[1][:8] + ".png", "a.png", "photo one.jpg"]
    # the images are the stored bytes, not re-encoded
    assert (root / "images" / "a.png").read_bytes() == service.store.image_path(hashes[0]).read_bytes()
    if fmt == "yolo":
        ds = sv.DetectionDataset.from_yolo(str(root / "images"), str(root / "labels"), str(root / "data.yaml"))
        assert (root / "classes.txt").read_text().split() == ds.classes
    elif fmt == "voc":
        ds = sv.DetectionDataset.from_pascal_voc(str(root / "images"), str(root / "annotations"))
    else:
        coco = json.loads((root / "annotations.json").read_text())
        assert coco["info"]["description"] and coco["licenses"] and "score" in coco["annotations"][0]
        assert {i["file_name"] for i in coco["images"]} == set(names)
        ds = sv.DetectionDataset.from_coco(str(root / "images"), str(root / "annotations.json"))
    assert len(ds) == 3
    assert sorted(ds.classes) == ["laptop", "mug"]
    for image_path, _, det in ds:
        order = np.argsort([ds.classes[c] for c in det.class_id])  # the labels sorted: laptop (the model's 0), mug
        assert np.allclose(det.xyxy[order], BOXES, atol=1.01), image_path
        assert [ds.classes[c] for c in det.class_id[order]] == ["laptop", "mug"]


def test_box_exports_without_images_hold_only_labels(filled, tmp_path):
    service, _ = filled
    yolo = Path(service.export_labels("yolo"))
    with zipfile.ZipFile(yolo) as z:
        members = z.namelist()
    assert "data.yaml" in members and "classes.txt" in members and sum(m.startswith("labels/") for m in members) == 3
    assert not any(m.startswith("images/") for m in members)
    coco = Path(service.export_labels("coco_detections"))
    assert coco.suffix == ".json" and json.loads(coco.read_text())["images"][0]["file_name"] == "a.png"


def test_label_studio_tasks_carry_scored_predictions_by_original_name(filled):
    service, hashes = filled
    tasks = json.loads(Path(service.export_labels("label_studio")).read_text())
    assert [t["data"]["image"] for t in tasks] == ["a.png", f"a-{hashes[1][:8]}.png", "photo one.jpg"]
    (pred,) = tasks[0]["predictions"]
    result = pred["result"][0]
    assert result["type"] == "rectanglelabels" and result["value"]["rectanglelabels"] == ["laptop"]
    assert result["score"] == pytest.approx(0.9) and pred["score"] == pytest.approx(0.75)
    assert result["original_width"] == 40 and result["value"]["x"] == pytest.approx(5.0)  # 2 of 40 px
    assert tasks[0]["meta"]["sha256"] == hashes[0]


def test_tag_exports_zip_the_images_under_their_names_and_train_reads_them(filled, tmp_path):
    from train.data import read_label_dataset

    service, hashes = filled
    root = unzip(service.export_labels("detic", True), tmp_path / "detic")
    samples, stats = read_label_dataset(root / "image_labels.json", root / "images")
    assert len(samples) == 3 and stats.skipped_missing == 0
    assert {s.path.name for s in samples} == {"a.png", f"a-{hashes[1][:8]}.png", "photo one.jpg"}
    root = unzip(service.export_labels("csv", True), tmp_path / "csv")
    samples, _ = read_label_dataset(root / "image_labels.csv", root / "images")
    assert len(samples) == 3 and all(s.positives == ["mug"] and s.negatives == ["laptop"] for s in samples)


def test_unknown_export_format_names_the_known_ones(service):
    with pytest.raises(ValueError, match="yolo, voc, label_studio"):
        service.export_labels("pascal")


# --- box labels in ------------------------------------------------------------------------------
def write_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"img{i}.png")
        paths[-1].write_bytes(image_bytes(10 + i))
    return paths


def coco_file(path: Path, names: list[str]) -> Path:
    path.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": n, "width": 40, "height": 32, "pos_category_ids": [2] if i == 0 else []}
                   for i, n in enumerate(names)],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 18, 22]},
                        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 6, 25, 22]},
                        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [30, 20, 50, 50]}],  # clipped to 40x32
        "categories": [{"id": 1, "name": "mug"}, {"id": 2, "name": "kitchen"}, {"id": 3, "name": "laptop"}]}))
    return path


def test_store_boxes_round_trip_through_sqlite_and_training(tmp_path):
    from app.store import LabelStore, StoreError
    from train.data import read_box_dataset
    from train.run_dir import RunDir

    store = LabelStore(tmp_path / "data")
    assert store.schema_version == 2
    a, b = store.add_image(image_bytes(1), "a.png"), store.add_image(image_bytes(2), "b.png")
    result = store.import_tags([(a, [], ["mug"])], {a: [("mug", (2, 3, 20, 25)), ("laptop", (-5, 1, 10, 40))],
                                                    b: [("mug", (1, 1, 1.5, 9))]})  # b's box is empty: dropped
    assert result == {"boxes": 2, "dropped": 1, "box_images": 1}
    assert store.boxes(a) == [{"image": a, "label": "mug", "box": [2, 3, 20, 25]},
                              {"image": a, "label": "laptop", "box": [0, 1, 10, 32]}]
    assert store.tags(a) == {"positives": ["laptop", "mug"], "negatives": []}  # a box's label is present
    store.import_tags([], {a: [("cup", (1, 1, 9, 9))]})  # the same image again: its boxes replaced
    assert [x["label"] for x in store.boxes()] == ["cup"]
    store.rename_label("cup", "mug")  # a merge moves the boxes
    assert store.boxes(a)[0]["label"] == "mug"
    with pytest.raises(StoreError):  # one transaction per file: nothing of it is stored
        store.import_tags([(b, ["x"], ["x"])], {b: [("x", (1, 1, 9, 9))]})
    assert store.boxes(b) == [] and store.box_count() == 1
    # reopened (another process): the same boxes; the training run's snapshot reads back identically
    again = LabelStore(tmp_path / "data")
    path = RunDir(tmp_path / "run").write_boxes(again.export_boxes_coco())
    samples, _ = read_box_dataset(path, again.image_dir)
    assert [(s.path, s.names, s.boxes.tolist()) for s in samples] == [(again.image_path(a), ["mug"], [[1, 1, 9, 9]])]
    store.delete_label("mug")
    assert store.box_count() == 0


def test_a_version_1_database_gains_the_boxes_table(tmp_path):
    import sqlite3

    from app.store import LabelStore

    store = LabelStore(tmp_path)
    h = store.add_image(image_bytes(1), "a.png")
    store.set_tags(h, ["mug"])
    with sqlite3.connect(tmp_path / "labels.db") as db:
        db.executescript("DROP TABLE boxes; PRAGMA user_version = 1;")
    reopened = LabelStore(tmp_path)
    assert reopened.schema_version == 2 and reopened.box_count() == 0 and reopened.tags(h)["positives"] == ["mug"]


def test_coco_boxes_import_with_their_images_and_say_what_they_did(service, tmp_path):
    images = write_images(tmp_path / "imgs", 3)
    labels = coco_file(tmp_path / "boxes.json", [p.name for p in images[:2]])
    report = service.import_labels([str(labels), *map(str, images[:2])])
    assert report["imported"] == 2 and report["boxes"] == 3 and report["images_added"] == 2
    (sentence,) = report["messages"]
    assert "'boxes.json' (COCO): 3 box(es) on 2 image(s) and image-level labels for 1 image(s)" in sentence
    assert "stored 3 box(es) on 2 image(s)" in sentence
    h = service.store.find_image("img1.png")
    assert service.store.boxes(h)[1] == {"image": h, "label": "laptop", "box": [30, 20, 40, 32]}
    assert service.store.tags(service.store.find_image("img0.png"))["positives"] == ["kitchen", "mug"]
    # without the images: never a silent "imported: 0"
    other = AppService(tmp_path / "other", predictor=service.predictor)
    report = other.import_labels([str(labels)])
    assert report["imported"] == 0 and report["missing"] == ["img0.png", "img1.png"]
    assert "3 box(es) on 2 image(s)" in report["messages"][0] and "2 image(s) not found" in report["messages"][0]


def test_yolo_zip_imports_boxes_in_pixels(service, tmp_path):
    images = write_images(tmp_path / "imgs", 2)
    archive = tmp_path / "yolo.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("data.yaml", "names:\n  0: mug\n  1: laptop\n")
        for p in images:
            z.write(p, f"images/train/{p.name}")
        z.writestr("labels/train/img0.txt", "0 0.5 0.5 0.5 0.5\n1 0.1 0.1 0.3 0.3 0.2 0.3\n")  # box; polygon
        z.writestr("labels/train/img1.txt", "")
    report = service.import_labels([str(archive)])
    assert report["images_added"] == 2 and report["boxes"] == 2, report
    assert "'yolo.zip' (YOLO): 2 box(es) on 1 image(s)" in report["messages"][0]
    boxes = service.store.boxes(service.store.find_image("img0.png"))
    assert [b["label"] for b in boxes] == ["mug", "laptop"]
    assert np.allclose([b["box"] for b in boxes], [[10, 8, 30, 24], [4, 3.2, 12, 9.6]])


def test_hostile_label_files_are_refused_whole_and_store_nothing(service, tmp_path):
    """A YOLO zip whose label inflates to 40 MB of spaces (~40 KB zipped) is refused before it is
    read; JSON nested 100,000 deep is named as not a label file; and neither leaves its images in
    the store (a label file is imported whole or not at all, the images with it)."""
    from app.store import StoreError

    image = write_images(tmp_path / "imgs", 1)[0]
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("classes.txt", "cat\n")
        z.write(image, "images/img0.png")
        z.writestr("labels/img0.txt", b"0 0.5 0.5 0.2 0.2\n" + b" " * (40 * 2**20))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(StoreError, match="hold more than 32 MB of text"):
        service.import_labels([str(bomb)])
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(StoreError, match="nested too deeply"):
        service.import_labels([str(nested), str(image)])
    assert service.store.images() == []


def test_a_yolo_image_already_stored_under_another_name_gets_its_boxes(service, tmp_path):
    image = write_images(tmp_path / "imgs", 1)[0]
    service.store.add_image(image, "renamed.png")
    archive = tmp_path / "yolo.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("classes.txt", "mug\n")
        z.write(image, "images/img0.png")
        z.writestr("labels/img0.txt", "0 0.5 0.5 0.5 0.5\n")
    report = service.import_labels([str(archive)])
    assert report["boxes"] == 1 and report["missing"] == [] and report["images_added"] == 0, report
    assert [b["label"] for b in service.store.boxes(service.store.find_image("renamed.png"))] == ["mug"]


def test_label_studio_and_yolo_exports_import_back_into_the_app(service, tmp_path):
    images = write_images(tmp_path / "imgs", 2)
    service.import_labels([str(coco_file(tmp_path / "boxes.json", [p.name for p in images])), *map(str, images)])
    stored = sorted((service.store._image(b["image"])["original_name"], b["label"], b["box"])
                    for b in service.store.boxes())
    for fmt in ("label_studio", "yolo", "voc", "coco_detections"):  # stored boxes: LS annotations, YOLO's, VOC's
        archive = service.export_labels(fmt, True)
        fresh = AppService(tmp_path / fmt, predictor=service.predictor)
        report = fresh.import_labels([archive])
        got = sorted((fresh.store._image(b["image"])["original_name"], b["label"], b["box"])
                     for b in fresh.store.boxes())
        if fmt != "coco_detections":  # YOLO and VOC: people's boxes, not the model's, where there are
            assert np.allclose([g[2] for g in got], [s[2] for s in stored], atol=1e-3 if fmt == "label_studio" else 1.01)
            assert [g[:2] for g in got] == [s[:2] for s in stored], report
            assert "predictions are not imported" not in report["messages"][0]
        else:  # the model's (fake) boxes
            assert len(got) == 2 * len(images) and report["boxes"] == 4
    voc = unzip(service.export_labels("voc", True), tmp_path / "voc")  # VOC: the stored boxes too
    ds = sv.DetectionDataset.from_pascal_voc(str(voc / "images"), str(voc / "annotations"))
    got = sorted((Path(p).name, ds.classes[c], list(box)) for p, _, det in ds for box, c in zip(det.xyxy, det.class_id))
    assert [g[:2] for g in got] == [s[:2] for s in stored]
    assert np.allclose([g[2] for g in got], [s[2] for s in stored], atol=1.01)
    tasks = json.loads(Path(service.export_labels("label_studio")).read_text())
    for t in tasks:
        t.pop("annotations", None)
    (tmp_path / "preds.json").write_text(json.dumps(tasks))
    report = service.import_labels([str(tmp_path / "preds.json")])
    assert "predictions are not imported as labels" in report["messages"][0]


def test_training_trains_on_the_stored_boxes_beside_the_tags(service, tmp_path, monkeypatch):
    from train.data import read_box_dataset
    from train.run_dir import RunDir

    images = write_images(tmp_path / "imgs", 2)
    service.import_labels([str(coco_file(tmp_path / "boxes.json", [p.name for p in images])), *map(str, images)])
    monkeypatch.setattr(service.jobs, "start", lambda run, **kw: run.id)  # no process: only what it would get
    monkeypatch.setattr(service, "_current_source", lambda path: "tiny")
    run = RunDir(service.jobs.runs_dir / service.start_training(iters=10))
    cfg = run.read_config()
    assert Path(cfg.box_data) == run.file(RunDir.BOXES) and Path(cfg.box_images) == service.store.image_dir
    assert cfg.label_data and Path(cfg.label_data) == run.file(RunDir.LABELS)
    samples, _ = read_box_dataset(cfg.box_data, cfg.box_images)
    assert sum(len(s.names) for s in samples) == 3


def test_csv_exports_never_hold_a_formula_and_still_read_back(service, tmp_path):
    """Tags like '=cmd|...' and '@SUM(1+1)' and a file named '=HYPERLINK(...).png' were written as
    they are: a spreadsheet opening the export runs them. Each such cell now starts with an
    apostrophe (shown as text), and importing the export gives the same tags back."""
    import csv as csv_module

    h = service.store.add_image(image_bytes(5), '=HYPERLINK("http://x").png')
    service.tag(h, "=cmd|' /C calc'!A0, -2+3", "@SUM(1+1)")
    rows = list(csv_module.reader(io.StringIO(Path(service.export_labels("csv")).read_text(encoding="utf-8"))))
    cells = [c for row in rows[1:] for c in row if c]
    assert cells and not any(c.startswith(("=", "+", "-", "@")) for c in cells), cells
    before = service.store.tags(h)
    exported = service.export_labels("csv")
    for label in before["positives"] + before["negatives"]:
        service.store.delete_label(label)
    report = service.import_labels([exported])
    assert report["imported"] == 1 and service.store.tags(h) == before, report


def test_label_files_of_odd_shapes_are_refused_or_read_as_meant(service, tmp_path):
    """A Label Studio choice given as one string is one tag (it was read as its letters); a COCO
    file giving one id to two images is refused (its boxes landed on the second image); shapes no
    reader expects are one sentence (they were a bare 'the app raised an exception')."""
    from app.store import StoreError

    image = write_images(tmp_path / "imgs", 1)[0]
    tasks = [{"data": {"image": "img0.png"}, "annotations": [{"result": [
        {"type": "choices", "value": {"choices": "dog"}},
        {"type": "rectanglelabels", "value": {"x": 10, "y": 10, "width": 50, "height": 50, "rectanglelabels": "bird"}}]}]}]
    (tmp_path / "ls.json").write_text(json.dumps(tasks))
    report = service.import_labels([str(tmp_path / "ls.json"), str(image)])
    h = service.store.find_image("img0.png")
    assert service.store.tags(h)["positives"] == ["bird", "dog"]  # a box's label is a tag too
    assert [b["label"] for b in service.store.boxes(h)] == ["bird"]
    assert report["boxes"] == 1
    twice = json.loads(coco_file(tmp_path / "twice.json", ["img0.png", "img1.png"]).read_text())
    twice["images"][1]["id"] = 1
    for name, data in (("twice.json", twice),
                       ("listid.json", {**twice, "images": [{"id": [1], "file_name": "img0.png"}]}),
                       ("ls_odd.json", [{"data": {"image": "img0.png"}, "annotations": [{"result": 7}]}])):
        (tmp_path / name).write_text(json.dumps(data))
        with pytest.raises(StoreError) as refused:
            service.import_labels([str(tmp_path / name)])
        assert f"'{name}'" in str(refused.value), str(refused.value)
    assert "image id 1 is given to two images" in _refusal(service, tmp_path / "twice.json")
    assert len(service.store.boxes()) == 1  # nothing of the refused files


def _refusal(service, path: Path) -> str:
    from app.store import StoreError

    with pytest.raises(StoreError) as refused:
        service.import_labels([str(path)])
    return str(refused.value)


def _zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_images_with_one_name_in_different_folders_keep_their_own_tags(service, tmp_path):
    """A zip holding a/photo.jpg, b/photo.jpg and c/photo.jpg: each row of a CSV naming them with
    their folders tags its own image (all three tags went onto one image, the others untagged)."""
    images = _zip_of(tmp_path / "images.zip", {f"{d}/photo.jpg": image_bytes(i, fmt="JPEG")
                                               for i, d in enumerate("abc")} | {"__MACOSX/a/._photo.jpg": b"\0\5",
                                                                                "readme.txt": b"", "more.zip": b""})
    labels = tmp_path / "labels.csv"
    labels.write_text("image,labels\na/photo.jpg,coins\nb/photo.jpg,rocket\nc/photo.jpg,person\n")
    report = service.import_labels([str(labels), str(images)])
    assert report["imported"] == 3 and report["images_added"] == 3
    # no resource fork or text file reported; the zip inside is, since its images are not read
    assert report["skipped"] == ["images.zip: 1 file(s) that are not images left out: 'more.zip' "
                                 "(a zip inside the zip is not opened)"]
    tags = {r["original_name"]: r["positives"] for r in service.store.images()}
    assert tags == {"a/photo.jpg": ["coins"], "b/photo.jpg": ["rocket"], "c/photo.jpg": ["person"]}
    assert "tags for 3 image(s)" in report["messages"][0]

    # A bare "photo.jpg" now fits three stored images: nothing is guessed, and the message says why.
    bare = tmp_path / "bare.csv"
    bare.write_text("image,labels\nphoto.jpg,wrong\n")
    report = service.import_labels([str(bare)])
    assert report["imported"] == 0 and report["ambiguous"] == ["photo.jpg"] and report["missing"] == []
    assert "several images have that name" in report["messages"][0]
    assert all("wrong" not in r["positives"] for r in service.store.images())
    # A longer path still finds its image among them.
    longer = tmp_path / "longer.csv"
    longer.write_text("image,labels\nexport/b/photo.jpg,launch pad\n")
    assert service.import_labels([str(longer)])["imported"] == 1
    assert {r["original_name"]: r["positives"] for r in service.store.images()}["b/photo.jpg"] == ["launch pad",
                                                                                                    "rocket"]


def _two_photos_in_an_allowed_folder(tmp_path, predictor, seed: int) -> tuple[AppService, Path]:
    """A service allowed to read tmp_path/allowed, which holds photos/sub1/photo.jpg and
    photos/sub2/photo.jpg (two different photos of one name)."""
    from app.policy import AccessPolicy

    allowed = tmp_path / "allowed"
    for i, sub in enumerate(("sub1", "sub2")):
        (allowed / "photos" / sub).mkdir(parents=True)
        (allowed / "photos" / sub / "photo.jpg").write_bytes(image_bytes(seed + i, fmt="JPEG"))
    return AppService(tmp_path / "data", predictor=predictor, policy=AccessPolicy(allowed_dirs=(allowed.resolve(),))), \
        allowed


def test_a_label_file_naming_files_in_an_allowed_folder_finds_each_one(tmp_path, tiny_predictor):
    """photos/sub1/photo.jpg and photos/sub2/photo.jpg in an allowed folder: each row finds its own
    file (the second row had gone onto the first image, and the second file was never added), and
    the report counts both as new images (it said 0)."""
    from app.policy import AccessPolicy

    service, allowed = _two_photos_in_an_allowed_folder(tmp_path, tiny_predictor, seed=10)
    labels = tmp_path / "labels.csv"
    labels.write_text("image,labels\nphotos/sub1/photo.jpg,coffee cup\nphotos/sub2/photo.jpg,rocket\n")
    report = service.import_labels([str(labels)])
    assert report["imported"] == 2 and report["images_added"] == 2
    tags = {r["original_name"]: r["positives"] for r in service.store.images()}
    assert tags == {"photos/sub1/photo.jpg": ["coffee cup"], "photos/sub2/photo.jpg": ["rocket"]}

    # Adding the folder itself names its images by their paths inside it: nothing new, and a
    # label file naming them that way finds them.
    added = service.add_folder(str(allowed / "photos"))
    assert len(added["added"]) == 2 and added["new"] == []
    fresh = AppService(tmp_path / "fresh", predictor=tiny_predictor,
                       policy=AccessPolicy(allowed_dirs=(allowed.resolve(),)))
    fresh.add_folder(str(allowed / "photos"))
    assert sorted(r["original_name"] for r in fresh.store.images()) == ["sub1/photo.jpg", "sub2/photo.jpg"]
    labels.write_text("image,labels\nsub2/photo.jpg,rocket\n")
    assert fresh.import_labels([str(labels)])["imported"] == 1
    assert {r["original_name"]: r["positives"] for r in fresh.store.images()}["sub2/photo.jpg"] == ["rocket"]


def test_pascal_voc_from_other_tools_and_hostile_xml(service, tmp_path):
    """A VOC zip as labelImg or CVAT writes it (Annotations/ + JPEGImages/, 1-based pixels); an XML
    with entities (which can inflate without bound) is refused before it is parsed."""
    from app.store import StoreError

    image = write_images(tmp_path / "imgs", 1)[0]
    voc = ("<annotation><folder>JPEGImages</folder><filename>img0.png</filename><size><width>40</width>"
           "<height>32</height><depth>3</depth></size><object><name>chat 猫</name><difficult>0</difficult>"
           "<bndbox><xmin>3</xmin><ymin>4</ymin><xmax>20</xmax><ymax>25</ymax></bndbox></object>"
           "<object><name>cup</name></object></annotation>")
    archive = _zip_of(tmp_path / "voc.zip", {"Annotations/img0.xml": voc.encode(), "notes.xml": b"<notes/>"})
    report = service.import_labels([str(archive), str(image)])
    assert report["boxes"] == 1 and report["missing"] == [], report
    assert "(Pascal VOC)" in report["messages"][0] and "1 object(s) without a readable box" in report["messages"][0]
    assert "1 XML file(s) that are not VOC annotations" in report["messages"][0]
    [box] = service.store.boxes(service.store.find_image("img0.png"))
    assert box["label"] == "chat 猫" and np.allclose(box["box"], [2, 3, 20, 25])
    laughs = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;">]>'
              "<annotation><filename>img0.png</filename><object><name>&y;</name></object></annotation>")
    for bad in (laughs.encode(), laughs.replace("DOCTYPE", "doctype ").encode(), voc.encode("utf-16")):
        with pytest.raises(StoreError, match="XML with a DOCTYPE, entities or in UTF-16 is not read"):
            service.import_labels([str(_zip_of(tmp_path / "bad.zip", {"a.xml": bad}))])
    # The encoding its declaration names; boxes that are not numbers are left out and said so.
    latin = ('<?xml version="1.0" encoding="ISO-8859-1"?><annotation><filename>img0.png</filename><object>'
             "<name>café</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
             "<object><name>nan</name><bndbox><xmin>nan</xmin><ymin>1</ymin><xmax>inf</xmax><ymax>9</ymax>"
             "</bndbox></object></annotation>")
    report = service.import_labels([str(_zip_of(tmp_path / "latin.zip", {"a.xml": latin.encode("latin-1")}))])
    assert "café" in [b["label"] for b in service.store.boxes()] and "1 object(s) without a readable box" in \
        report["messages"][0]
    huge = "<annotation>" + "<a>x</a>" * (5 * 2**20 // 8) + "</annotation>"  # 5 MB, deflates to a few kB
    with pytest.raises(StoreError, match="larger than 4 MB: not one image's VOC annotation"):
        service.import_labels([str(_zip_of(tmp_path / "huge.zip", {"a.xml": huge.encode()}))])


def test_a_name_with_folders_is_not_taken_for_a_stored_bare_name(tmp_path, tiny_predictor):
    """A stored 'photo.jpg' (uploaded without its folder) took every row naming
    'photos/sub1/photo.jpg' or 'photos/sub2/photo.jpg': two photos' tags on one image. The file at
    that path in an allowed folder comes first; without one, a bare stored name is taken only when
    the label file does not name that file in other folders too."""
    from app.policy import AccessPolicy

    service, _ = _two_photos_in_an_allowed_folder(tmp_path, tiny_predictor, seed=20)
    cat = service.store.add_image(image_bytes(30, fmt="JPEG"), "photo.jpg")
    labels = tmp_path / "labels.csv"
    labels.write_text("image,labels\nphotos/sub1/photo.jpg,horse\nphotos/sub2/photo.jpg,cup\n")
    report = service.import_labels([str(labels)])
    assert report["imported"] == 2 and report["images_added"] == 2, report
    tags = {r["original_name"]: r["positives"] for r in service.store.images()}
    assert tags == {"photo.jpg": [], "photos/sub1/photo.jpg": ["horse"], "photos/sub2/photo.jpg": ["cup"]}

    # A name no file system takes (too long) is a missing image, not a server error.
    labels.write_text("image,labels\n" + "x/" * 3000 + "y.png,horse\n" + "a" * 5000 + ".png,horse\n")
    report = service.import_labels([str(labels)])
    assert report["imported"] == 0 and len(report["missing"]) == 2

    labels.write_text("image,labels\nphotos/sub1/photo.jpg,horse\nphotos/sub2/photo.jpg,cup\n")
    bare = AppService(tmp_path / "bare", predictor=tiny_predictor, policy=AccessPolicy())
    cat = bare.store.add_image(image_bytes(30, fmt="JPEG"), "photo.jpg")
    report = bare.import_labels([str(labels)])  # two folders, one stored bare name: no guess
    assert report["imported"] == 0 and report["missing"] == ["photos/sub1/photo.jpg", "photos/sub2/photo.jpg"]
    assert bare.store.tags(cat)["positives"] == []
    labels.write_text("image,labels\nsub1/photo.jpg,cat\n")  # one path: the stored bare name is it
    assert bare.import_labels([str(labels)])["imported"] == 1 and bare.store.tags(cat)["positives"] == ["cat"]


def test_an_export_of_images_named_alike_imports_back_into_its_own_store(service, tmp_path):
    """The CSV and VOC exports of a/photo.jpg, b/photo.jpg, c/photo.jpg, imported back into the
    store they came from: every row finds its image (the CSV's original_name column names it; the
    zip's photo.jpg is exactly the first one), none is called ambiguous and no box is lost."""
    images = _zip_of(tmp_path / "images.zip", {f"{d}/photo.jpg": image_bytes(40 + i, fmt="JPEG")
                                               for i, d in enumerate("abc")})
    labels = tmp_path / "labels.csv"
    labels.write_text("image,labels\na/photo.jpg,cat\nb/photo.jpg,rocket\nc/photo.jpg,cup\n")
    service.import_labels([str(labels), str(images)])
    before = {r["original_name"]: r["positives"] for r in service.store.images()}
    report = service.import_labels([service.export_labels("csv", True)])
    assert report["ambiguous"] == [] and report["imported"] == 3, report
    assert {r["original_name"]: r["positives"] for r in service.store.images()} == before
    for h in (r["hash"] for r in service.store.images()):
        service.store.import_tags([], {h: [("thing", (1.0, 1.0, 20.0, 20.0))]})
    boxes = len(service.store.boxes())
    report = service.import_labels([service.export_labels("voc", True)])
    assert report["ambiguous"] == [] and report["boxes"] == 3 and len(service.store.boxes()) == boxes, report


def test_names_match_across_case_unicode_forms_and_stale_checksums(tmp_path, tiny_predictor):
    """macOS writes 'café' decomposed and a CSV has it composed; 'IMG_1.JPG' is 'img_1.jpg'; an
    entry whose sha256 is not stored is matched by its names as if it had none (a stale sha256 let a
    stored bare name take two folders' tags and pass over the allowed folder's file); images
    uploaded beside a label file win over stored ones of the same name."""
    import unicodedata

    from app.policy import AccessPolicy

    allowed = tmp_path / "allowed"
    (allowed / "zz").mkdir(parents=True)
    (allowed / "zz" / "pic3.png").write_bytes(image_bytes(50))
    service = AppService(tmp_path / "data", predictor=tiny_predictor,
                         policy=AccessPolicy(allowed_dirs=(allowed.resolve(),)))
    decomposed = unicodedata.normalize("NFD", "q/café.png")
    images = _zip_of(tmp_path / "images.zip", {decomposed: image_bytes(51), "q/IMG_1.JPG": image_bytes(52, fmt="JPEG")})
    labels = tmp_path / "labels.csv"
    labels.write_text("image,labels\ncafé.png,cup\nimg_1.jpg,plate\n", encoding="utf-8")
    report = service.import_labels([str(labels), str(images)])
    assert report["imported"] == 2 and report["missing"] == [], report

    bare2 = service.store.add_image(image_bytes(53), "pic2.png")
    bare3 = service.store.add_image(image_bytes(54), "pic3.png")
    stale = "f" * 64
    entries = [{"id": i + 1, "file_name": f, "sha256": stale, "pos_category_ids": [1]}
               for i, f in enumerate(["y1/pic2.png", "y2/pic2.png", "zz/pic3.png"])]
    detic = tmp_path / "detic.json"
    detic.write_text(json.dumps({"images": entries, "categories": [{"id": 1, "name": "stale"}]}))
    report = service.import_labels([str(detic)])
    assert service.store.tags(bare2)["positives"] == [] and service.store.tags(bare3)["positives"] == []
    assert report["missing"] == ["y1/pic2.png", "y2/pic2.png"] and report["imported"] == 1
    assert {r["original_name"]: r["positives"] for r in service.store.images()}["zz/pic3.png"] == ["stale"]

    # The same names again, uploaded beside a new label file with other photos: those are meant.
    again = _zip_of(tmp_path / "again.zip", {"q/café.png": image_bytes(60), "q/IMG_1.JPG": image_bytes(61, fmt="JPEG")})
    labels.write_text("image,labels\nq/café.png,bowl\nq/IMG_1.JPG,fork\n", encoding="utf-8")
    report = service.import_labels([str(labels), str(again)])
    assert report["imported"] == 2 and report["ambiguous"] == [], report
    tagged = {t for r in service.store.images() for t in r["positives"]}
    assert {"bowl", "fork"} <= tagged
    for r in service.store.images():
        if "bowl" in r["positives"] or "fork" in r["positives"]:
            assert not ({"cup", "plate"} & set(r["positives"])), r  # the new photos, not the stored ones
