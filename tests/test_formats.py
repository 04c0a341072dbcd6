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
