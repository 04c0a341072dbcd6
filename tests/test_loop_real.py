"""Issue 19: bench/loop_real.py, the tag -> train -> serve loop on real photographs.

The scene builder (exact boxes, deterministic per seed, tags only for names present, unseen
photos kept out of the tagged and held-out scenes), the box AP50 it reports, and (slow) the
--smoke path end to end through AppService."""

import json

import numpy as np
import pytest
import supervision as sv

from bench import loop_real as lr


@pytest.fixture(scope="module")
def scenes():
    return lr.build_scenes(0, tagged=8, heldout=4, unseen=3)


def test_names_and_cutouts():
    assert len(lr.NOVEL) >= 6 and not set(lr.NOVEL) & set(lr.BASE)
    for cut in lr.CUTOUTS:
        h, w = lr.photo(cut.photo).shape[:2]
        x1, y1, x2, y2 = cut.crop
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, cut
        for name, (bx1, by1, bx2, by2) in cut.objects + cut.partial:
            assert name in lr.VOCABULARY
            assert x1 <= bx1 < bx2 <= x2 and y1 <= by1 < by2 <= y2, (cut, name)
    seen = {n for c in lr.CUTOUTS if not c.unseen for n, _ in c.objects}
    assert seen == set(lr.VOCABULARY)  # every name can be tagged
    unseen = {n for c in lr.CUTOUTS if c.unseen for n, _ in c.objects}
    assert len(unseen & set(lr.NOVEL)) >= 3 and unseen & set(lr.BASE)
    assert any(u for *_, u in lr.BACKGROUNDS) and any(not u for *_, u in lr.BACKGROUNDS)


def test_boxes_inside_images(scenes):
    assert {k: len(v) for k, v in scenes.items()} == {"tagged": 8, "heldout": 4, "unseen": 3}
    for split in scenes.values():
        for s in split:
            h, w = s.image.shape[:2]
            assert s.image.dtype == np.uint8 and s.image.shape == (480, 640, 3)
            assert s.objects
            for _, (x1, y1, x2, y2) in s.objects + s.partial:
                assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h


def test_deterministic_per_seed(scenes):
    again = lr.build_scenes(0, tagged=8, heldout=4, unseen=3)
    other = lr.build_scenes(1, tagged=8, heldout=4, unseen=3)
    for split in scenes:
        for a, b in zip(scenes[split], again[split]):
            assert np.array_equal(a.image, b.image) and a.objects == b.objects and a.partial == b.partial
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(scenes["tagged"], other["tagged"]))


def test_tags_only_for_names_present(scenes):
    for split in scenes.values():
        for s in split:
            positives, negatives = s.tags()
            assert set(positives) == {n for n, _ in s.objects}
            assert not set(negatives) & set(positives)
            assert not set(negatives) & {n for n, _ in s.partial}  # shown in part: neither
            assert set(positives) | set(negatives) <= set(lr.VOCABULARY)


def test_unseen_photos_only_in_the_unseen_split(scenes):
    for split, items in scenes.items():
        for s in items:
            assert s.sources and all(c.unseen == (split == "unseen") for c in s.sources)


def _as_detections(objects, score=0.9):
    return sv.Detections(xyxy=np.array([b for _, b in objects], dtype=float).reshape(-1, 4),
                         confidence=np.full(len(objects), score),
                         data={"class_name": np.array([n for n, _ in objects], dtype=str)})


def test_box_ap50(scenes):
    items = scenes["heldout"] + scenes["unseen"]
    perfect = lr.box_ap50(items, [_as_detections(s.objects) for s in items])
    assert perfect and all(v == pytest.approx(1.0) for v in perfect.values())
    assert set(perfect) == {n for s in items for n, _ in s.objects}
    empty = lr.box_ap50(items, [_as_detections([]) for _ in items])
    assert set(empty) == set(perfect) and not any(empty.values())
    # a box on a part that is shown but not scored (a crowd region) costs nothing; elsewhere it is a false positive
    image = np.zeros((480, 640, 3), np.uint8)
    scene = lr.Scene("s", image, [("person", (100, 100, 300, 400)), ("flag", (400, 50, 500, 200))],
                     [("flag", (100, 100, 150, 200))])
    right = [("person", (100, 100, 300, 400)), ("flag", (400, 50, 500, 200))]
    on_part = _as_detections([("flag", (100, 100, 150, 200))], 0.95)
    elsewhere = _as_detections([("flag", (520, 300, 600, 400))], 0.95)
    assert lr.box_ap50([scene], [sv.Detections.merge([on_part, _as_detections(right)])])["flag"] == pytest.approx(1.0)
    assert lr.box_ap50([scene], [sv.Detections.merge([elsewhere, _as_detections(right)])])["flag"] < 0.6
    # shifted boxes (IoU < 0.5) score nothing
    shifted = [_as_detections([(n, (x1 + (x2 - x1) * 0.6, y1, x2 + (x2 - x1) * 0.6, y2)) for n, (x1, y1, x2, y2) in s.objects])
               for s in items]
    assert not any(lr.box_ap50(items, shifted).values())


def test_held_out_report_and_targets():
    report = {"images": 4, "labels": {"coin": {"before": 0.2, "after": 0.6, "positives": 2, "negatives": 2},
                                      "cat": {"before": 0.9, "after": None, "positives": 1, "negatives": 3}},
              "mean_before": 0.55, "mean_after": 0.6, "best_iteration": 200, "note": ""}
    il = lr.image_level(report)
    assert il["novel_before"] == 0.2 and il["novel_after"] == 0.6 and il["base_after"] is None
    assert lr.image_level(None) is None
    result = {"state": "finished", "seconds": {"train": 100.0, "use": 2.0}, "image_level": il,
              "before": {"heldout": {"novel": 0.1, "base": 0.5}}, "after": {"heldout": {"novel": 0.2, "base": 0.495}}}
    assert lr.targets(result) == {"novel_ap50_x1.5": True, "base_ap50_within_1pt": True, "image_ap_up": True,
                                  "train_and_serve_le_5min": True}
    result["after"]["heldout"].update(novel=0.14, base=0.48)
    result["image_level"] = None
    assert lr.targets(result) == {"novel_ap50_x1.5": False, "base_ap50_within_1pt": False, "image_ap_up": None,
                                  "train_and_serve_le_5min": True}


@pytest.mark.slow
def test_smoke_end_to_end(tmp_path):
    out = tmp_path / "loop.json"
    results = lr.main(["--smoke", "--json", str(out)])
    assert len(results) == 1
    r = results[0]
    assert r["state"] == "finished" and r["iterations"] == 2
    assert r["after"] is not None and set(r["before"]) == {"heldout", "unseen"}
    assert set(r["seconds"]) >= {"scenes", "load", "tag", "before", "train", "use", "after"}
    saved = json.loads(out.read_text())
    assert saved["smoke"] and saved["results"][0]["run"] == r["run"]


def test_use_model_confirms_where_the_service_asks():
    class Today:
        def use_model(self, source):
            return {"source": source}

    class WithConfirm:
        def use_model(self, source, confirm=False):
            return {"source": source, "confirm": confirm}

    assert lr._use(Today(), "run1") == {"source": "run1"}
    assert lr._use(WithConfirm(), "run1") == {"source": "run1", "confirm": True}
