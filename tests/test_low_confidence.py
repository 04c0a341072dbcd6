"""Issue 20, part 4: never a silent empty answer. Nothing above the threshold -> the best guess
per name, drawn dashed, listed as low confidence, and a sentence saying why."""

import numpy as np
import pytest
import supervision as sv

from detector.annotate import annotate, detections_to_records
from detector.images import ImageLoadError
from detector.low_confidence import best_guesses, top_per_name


def _dets(scores, labels):
    n = len(scores)
    return sv.Detections(xyxy=np.tile(np.array([[10.0, 10.0, 60.0, 60.0]]), (n, 1)) + np.arange(n)[:, None],
                         confidence=np.array(scores, dtype=np.float32), class_id=np.array(labels),
                         data={"class_name": np.array([["cup", "spoon", "cat"][c] for c in labels])})


def test_top_per_name_keeps_the_best_box_of_each_name_marked_low():
    out = top_per_name(_dets([0.05, 0.2, 0.1, 0.15, 0.02], [0, 1, 0, 2, 1]), limit=5)
    assert list(out["class_name"]) == ["spoon", "cat", "cup"]
    assert np.allclose(out.confidence, [0.2, 0.15, 0.1]) and out.data["low_confidence"].all()
    assert len(top_per_name(_dets([0.05, 0.2, 0.1], [0, 1, 2]), limit=2)) == 2
    assert len(top_per_name(_dets([], []))) == 0
    records = detections_to_records(out)
    assert all(r["low_confidence"] is True for r in records)
    assert "low_confidence" not in detections_to_records(_dets([0.5], [0]))[0]


def test_dashed_guesses_are_drawn(small_image):
    guesses = top_per_name(_dets([0.2], [0]))
    plain = annotate(small_image, _dets([], []))
    drawn = annotate(small_image, _dets([], []), guesses)
    assert np.array_equal(plain, small_image)
    changed = np.any(drawn != small_image, axis=-1)
    top = changed[10, 10:61]  # the dashed top edge: drawn, with gaps
    assert top.any() and not top.all()


def test_service_shows_guesses_and_says_why(tmp_path, tiny_predictor, small_image):
    from app.service import AppService
    from app.ui.detect_tab import result_line

    service = AppService(tmp_path, predictor=tiny_predictor)
    drawn, records = service.detect(small_image, "person, <b>flag</b>", score_threshold=1.0)
    assert records and all(r.get("low_confidence") for r in records)
    assert len({r["class_name"] for r in records}) == len(records) <= 2
    assert not np.array_equal(drawn, small_image)
    line = result_line(records, 1.0)
    assert line.startswith("Nothing reached 1.00; the best guesses are shown dashed")
    assert "&lt;b&gt;flag&lt;/b&gt;" in line and "<b>" not in line
    # with boxes above the threshold, no guesses are added
    _, found = service.detect(small_image, "person, flag", score_threshold=0.0, max_detections=3)
    assert len(found) == 3 and not any(r.get("low_confidence") for r in found)
    assert result_line(found, 0.0) == "3 box(es) scoring 0.00 or more"  # a 0.00 box is not "above 0.00"
    assert "to this model nothing here looks like these names" in result_line([], 0.3)
    assert len(best_guesses(tiny_predictor, small_image, "person", floor=1.0)) == 0


def test_a_guess_label_is_white_on_a_dark_plate(small_image):
    """Readable on any photo (thin grey text vanished on a white cup): a plate of the label colour
    inside the box's top-left corner, with white text on it."""
    from detector.annotate import LOW_CONFIDENCE_PLATE

    light = np.full_like(small_image, 250)
    drawn = annotate(light, _dets([], []), top_per_name(_dets([0.2], [0])))
    corner = drawn[12:40, 12:60].reshape(-1, 3)
    assert (corner == LOW_CONFIDENCE_PLATE).all(axis=1).sum() > 50
    assert (corner == 255).all(axis=1).any()


def test_batch_images_with_nothing_found_get_guesses(tmp_path, tiny_predictor, small_image):
    """Detect all: an image where nothing reaches the threshold gets its best guesses, as the
    single-image Detect does; an image with boxes gets none, and the gallery caption says which."""
    from PIL import Image

    from app.service import AppService
    from app.ui.detect_tab import _count, batch_line

    paths = []
    for i, image in enumerate((small_image, small_image[::-1].copy())):
        paths.append(str(tmp_path / f"p{i}.png"))
        Image.fromarray(image).save(paths[-1])
    service = AppService(tmp_path / "app", predictor=tiny_predictor)
    results = service.detect_batch(paths, "person, flag", score_threshold=1.0)
    assert [r["image"] for r in results] == ["p0.png", "p1.png"]
    for r in results:
        assert r["detections"] and all(d.get("low_confidence") for d in r["detections"])
        assert not np.array_equal(r["drawn"], small_image) and not np.array_equal(r["drawn"], small_image[::-1])
        assert _count(r["detections"]).startswith("no box; ") and "guess(es), dashed" in _count(r["detections"])
    assert batch_line(results) == "2 image(s): 0 box(es); 2 image(s) with only low-confidence guesses (dashed)"
    found = service.detect_batch(paths, "person, flag", score_threshold=0.0, max_detections=3)
    assert all(len(r["detections"]) == 3 and not any(d.get("low_confidence") for d in r["detections"]) for r in found)
    assert _count(found[0]["detections"]) == "3 box(es)" and batch_line(found) == "2 image(s): 6 box(es)"
    assert _count([]) == "no box"
    # A file that is no image does not stop the others (it stopped the whole batch): it is listed
    # in its place and the line says so; all unreadable is one error.
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    mixed = service.detect_batch([paths[0], str(bad), paths[1]], "person, flag", score_threshold=0.0, max_detections=3)
    assert [r["image"] for r in mixed] == ["p0.png", "notes.png", "p1.png"]
    assert "notes.png" in mixed[1]["error"] and "drawn" not in mixed[1]
    assert [len(r["detections"]) for r in (mixed[0], mixed[2])] == [3, 3]
    assert batch_line(mixed).startswith("2 image(s): 6 box(es). Skipped 1: ") and "notes.png" in batch_line(mixed)
    with pytest.raises(ImageLoadError, match="no image could be read"):
        service.detect_batch([str(bad)], "person")


def test_detect_all_decodes_a_few_images_at_a_time_draws_previews_and_has_a_limit(tmp_path, tiny_predictor,
                                                                                     small_image, monkeypatch):
    """20 uploads of 4000 x 4000 px took the app from 1.9 to 6 GB: every image was decoded, and drawn
    at full size, before the first was answered. Now a few at a time, drawn as previews (boxes in the
    records stay in the image's own pixels), and a call with too many images is refused in one line."""
    from PIL import Image

    import app.service as service_module
    from app.service import AppService

    monkeypatch.setattr(service_module, "BATCH_CHUNK", 2)
    monkeypatch.setattr(service_module, "BATCH_PREVIEW_SIDE", 100)
    big = np.kron(small_image, np.ones((2, 2, 1), dtype=np.uint8))  # twice the size: 2 px per pixel
    paths = [str(tmp_path / f"p{i}.png") for i in range(5)]
    for i, path in enumerate(paths):
        Image.fromarray(big if i % 2 else small_image).save(path)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    paths.insert(3, str(bad))
    service = AppService(tmp_path / "app", predictor=tiny_predictor)
    seen = []
    predict = tiny_predictor.predict
    monkeypatch.setattr(tiny_predictor, "predict", lambda images, *a, **k: seen.append(len(images)) or predict(images, *a, **k))
    results = service.detect_batch(paths, "person, flag", score_threshold=0.0, max_detections=3)
    assert seen == [2, 1, 2]  # (p0, p1), (p2; notes.png unreadable), (p3, p4)
    assert [r["image"] for r in results] == ["p0.png", "p1.png", "p2.png", "notes.png", "p3.png", "p4.png"]
    assert "error" in results[3]
    drawn = [r for r in results if "drawn" in r]
    assert all(max(r["drawn"].shape[:2]) <= 100 for r in drawn)
    # the records are in each image's own pixels, not the preview's
    for r, image in ((results[0], small_image), (results[1], big)):
        boxes = np.array([d["box"] for d in r["detections"]])
        assert boxes.max() > 100 and (boxes[:, 2] <= image.shape[1]).all() and (boxes[:, 3] <= image.shape[0]).all()
    assert np.array([d["box"] for d in results[1]["detections"]]).max() > max(small_image.shape[:2])
    monkeypatch.setattr(service_module, "MAX_BATCH_IMAGES", 4)
    with pytest.raises(ValueError, match="at most 4 images at a time \\(6 given\\)"):
        service.detect_batch(paths, "person")


def test_the_better_of_two_coinciding_boxes_is_drawn_on_top(small_image):
    """A cat also read as a kitten: the same box twice; the higher score's colour is the one seen."""
    both = _dets([0.3, 0.9], [2, 0])  # kitten-like 0.3 first, cat 0.9 second ...
    both.xyxy[:] = [[10.0, 10.0, 60.0, 60.0]]
    best_only = _dets([0.9], [0])
    best_only.xyxy[:] = [[10.0, 10.0, 60.0, 60.0]]
    worse_only = _dets([0.3], [2])
    worse_only.xyxy[:] = [[10.0, 10.0, 60.0, 60.0]]
    edge = (slice(30, 40), 10)  # the left edge, below any label
    assert np.array_equal(annotate(small_image, both)[edge], annotate(small_image, best_only)[edge])
    assert not np.array_equal(annotate(small_image, worse_only)[edge], annotate(small_image, best_only)[edge])
    flipped = _dets([0.9, 0.3], [0, 2])  # ... in either order
    flipped.xyxy[:] = [[10.0, 10.0, 60.0, 60.0]]
    assert np.array_equal(annotate(small_image, flipped)[edge], annotate(small_image, best_only)[edge])


def test_labels_draw_accents_and_scripts_and_cut_long_names(small_image):
    """Box labels were OpenCV's text: an emoji was drawn as "?", Hebrew and Arabic left to right (read
    backwards), and a 200-character name ran off the picture with its score."""
    from detector.annotate import MAX_LABEL_CHARS, annotate

    def drawn(name: str, low: bool = False) -> np.ndarray:
        det = _dets([0.9], [0])
        det.data["class_name"] = np.array([name])
        return annotate(small_image, det[:0], det) if low else annotate(small_image, det)

    for low in (False, True):
        assert not np.array_equal(drawn("cat 🐱", low), drawn("cat ?", low))
        long = "x" * 200
        assert np.array_equal(drawn(long, low), drawn("x" * (MAX_LABEL_CHARS - 1) + "…", low))
        assert not np.array_equal(drawn(long, low), drawn("x" * 10, low))
