"""Issue 23: the batched predict pipeline (one upload, one crop pass, one selection + NMS over the
batch, one copy back) gives what image-by-image prediction gives, with few ops and syncs.

Runs on CUDA when present (the `device` fixture), else on the CPU. Tolerances: 1e-3 px for boxes
and 1e-4 for scores between a batch and single-image calls (batched convolutions may sum in
another order); bf16 on CUDA is compared in tests/test_cuda_paths.py."""

import numpy as np
import pytest
import torch

from bench.op_counts import count_ops
from detector import OpenVocabDetector, Predictor
from detector.images import load_image
from detector.model import EncodedImages
from detector.presets import PRESETS

NAMES = "person, cup, flower, rocket"


@pytest.fixture(scope="module")
def scored(device):
    """The tiny model with CLIP region scores, the objectness product and part suppression on."""
    cfg = PRESETS["tiny"].replace(region_scoring=True, region_scorer="clip", region_top_k=30,
                                  mult_proposal_score=True, part_suppression=0.5, score_threshold=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        predictor = Predictor(OpenVocabDetector(cfg), device=device)
    predictor.cache_size = 0
    return predictor


@pytest.fixture(scope="module")
def photos(astronaut) -> list[np.ndarray]:
    return [np.ascontiguousarray(astronaut[y : y + 160, x : x + 200]) for y, x in ((0, 0), (100, 150), (300, 60))]


def assert_same(a, b):
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a.class_id, b.class_id)
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3, rtol=0)
    np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-4, rtol=0)


def test_a_batch_gives_what_single_images_give(scored, photos):
    assert scored.predict([], NAMES) == []
    batch = scored.predict(photos, NAMES, max_detections=40)
    for photo, det in zip(photos, batch):
        assert_same(det, scored.predict(photo, NAMES, max_detections=40)[0])


def test_batched_selection_equals_the_per_image_reference(scored, photos):
    """`detect_batch` (one mask, image x class NMS, one copy) vs `classify` (image by image)."""
    names, emb = scored.embed(NAMES)
    encs = scored.encode([load_image(p) for p in photos])
    weights = scored.clip_weights(names)
    with torch.inference_mode():
        batch = scored.model.detect_batch(EncodedImages.concat(encs), emb, 0.0, 0.5, 40,
                                          region_scorer=scored.region_scorer, clip_weights=weights)
        for enc, det in zip(encs, batch):
            ref = scored.model.classify(enc, emb, 0.0, 0.5, 40, region_scorer=scored.region_scorer,
                                        clip_weights=weights)[0]
            assert len(det["scores"]) == len(ref["scores"]) > 0
            np.testing.assert_array_equal(det["labels"], ref["labels"].cpu().numpy())
            np.testing.assert_allclose(det["boxes"], ref["boxes"].float().cpu().numpy(), atol=1e-3, rtol=0)
            np.testing.assert_allclose(det["scores"], ref["scores"].float().cpu().numpy(), atol=1e-5, rtol=0)


def test_images_of_several_shapes_in_one_batch(scored, photos, small_image):
    a, b = photos[0], small_image  # 160 x 200 and 192 x 192
    dets = scored.predict([a, b, a], NAMES, max_detections=20)
    assert_same(dets[0], dets[2])
    for img, det in zip([a, b], dets):
        assert len(det) > 0
        assert (det.xyxy >= 0).all() and (det.xyxy[:, 2] <= img.shape[1]).all() and (det.xyxy[:, 3] <= img.shape[0]).all()


def test_syncs_do_not_grow_with_the_batch_and_ops_barely_do(scored, photos):
    scored.predict(photos[:1], NAMES)
    one = count_ops(lambda: scored.predict(photos[:1], NAMES))
    three = count_ops(lambda: scored.predict(photos, NAMES, batch_size=3))
    assert three["syncs"] == one["syncs"]
    # torchvision's Faster R-CNN adds ~260 top-level ops per image (bench/detect.py --ops)
    assert (three["top_level"] - one["top_level"]) / 2 < 40


def test_the_cache_key_sees_every_byte_of_small_images_and_samples_big_ones():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    edited = small.copy()
    edited[200, 100, 1] ^= 1
    key = Predictor._key
    assert key(load_image(small)) == key(load_image(small.copy()))
    assert key(load_image(small)) != key(load_image(edited))
    big = rng.integers(0, 255, (1000, 1000, 3), dtype=np.uint8)  # 3 MB: every 4th byte
    edited = big.copy()
    edited[500, 10:12] = 255 - edited[500, 10:12]  # two pixels = 6 consecutive bytes
    assert key(load_image(big)) != key(load_image(edited))
    assert key(load_image(big)) != key(load_image(big[:, :999]))


def test_a_vocabulary_is_embedded_and_uploaded_once(scored, monkeypatch):
    calls = []
    original = scored.embedder.__class__.__call__
    monkeypatch.setattr(scored.embedder.__class__, "__call__", lambda self, v: calls.append(v) or original(self, v))
    n1, e1 = scored.embed("zebra, kite")
    n2, e2 = scored.embed(["zebra", "kite"])
    assert n1 == n2 == ["zebra", "kite"] and e2 is e1 and len(calls) == 1
    assert scored.clip_weights(n1) is scored.clip_weights(n2)


def test_large_images_are_made_floats_a_few_at_a_time_with_the_same_result(scored, monkeypatch):
    """Eight 4000 x 4000 photos in one group had been turned into floats all at once (two copies:
    3.6 GB); a group now goes through the float conversion in slices, with the very same tensor out."""
    import detector.model as model_module

    transform = scored.model.transform
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 256, (5, 90, 120, 3), dtype=torch.uint8, generator=g).to(scored.device)
    whole = transform.from_uint8([([0, 1, 2, 3, 4], t)], 5)
    monkeypatch.setattr(model_module, "FLOAT_PIXELS", 2 * 3 * 90 * 120)  # two images a slice: 2 + 2 + 1
    sliced = transform.from_uint8([([0, 1, 2, 3, 4], t)], 5)
    assert sliced.image_sizes == whole.image_sizes and torch.equal(sliced.tensors, whole.tensors)
