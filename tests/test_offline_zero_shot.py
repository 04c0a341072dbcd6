"""Issue 14: the offline model detects real things before any training.

Selective-search proposals until the RPN is trained, ImageNet region scores mapped onto the
vocabulary through MiniLM, and the acceptance checks on real scikit-image photographs."""

import numpy as np
import pytest
import torch
from PIL import Image

from detector import OpenVocabDetector, Predictor
from detector.presets import PRESETS
from detector.proposals import ALIGNDET, ProposalParams, best_iou, filter_proposals, selective_search
from detector.roi_heads import suppress_parts

# --- selective search ------------------------------------------------------------------------


def _rectangles_image(seed: int = 0):
    """A 256x192 noisy grey image with three flat-coloured rectangles at known boxes."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(128, 6, (192, 256, 3)), 0, 255).astype(np.uint8)
    boxes = [(20, 30, 90, 110), (120, 20, 230, 80), (140, 110, 200, 180)]
    for (x1, y1, x2, y2), colour in zip(boxes, [(220, 40, 40), (30, 160, 60), (40, 60, 210)]):
        img[y1:y2, x1:x2] = colour
    return img, torch.tensor(boxes, dtype=torch.float)


def test_selective_search_recovers_known_rectangles():
    img, truth = _rectangles_image()
    props = selective_search(img, ALIGNDET)
    assert 0 < len(props) <= ALIGNDET.top_k
    assert (best_iou(props, truth) >= 0.7).all(), best_iou(props, truth)
    # Same image, same proposals (OpenCV's own order is random; ours is not).
    assert torch.equal(selective_search(img, ALIGNDET), props)
    # Tensor input in [0, 1] gives the same boxes as the uint8 array.
    assert torch.equal(selective_search(torch.from_numpy(img).permute(2, 0, 1).float() / 255, ALIGNDET), props)


def test_filter_applies_aligndet_rules():
    h, w = 480, 640
    boxes = torch.tensor([
        [0, 0, 200, 150],  # keep
        [10, 10, 30, 200],  # too narrow (20 px < 32)
        [0, 0, 300, 60],  # aspect 5 > 3
        [0, 0, 620, 470],  # sqrt(area ratio) ~ 0.97 > 0.8
        [1, 1, 201, 151],  # near-duplicate of the first (IoU ~ 0.98)
        [300, 300, 400, 400],  # keep
    ], dtype=torch.float)
    kept = filter_proposals(boxes, (h, w), ALIGNDET)
    assert kept.tolist() == [[0, 0, 200, 150], [300, 300, 400, 400]]  # largest first
    assert len(filter_proposals(boxes, (h, w), ProposalParams(top_k=1))) == 1
    # Small images scale the 32 px minimum: a 20 px box is kept in a 240 px image (min 16 px).
    assert len(filter_proposals(torch.tensor([[0.0, 0, 20, 20]]), (240, 320), ALIGNDET)) == 1
    assert len(filter_proposals(torch.tensor([[0.0, 0, 20, 20]]), (480, 640), ALIGNDET)) == 0


def test_part_suppression_keeps_the_whole_object():
    boxes = torch.tensor([[0.0, 0, 100, 100], [10, 10, 40, 40], [60, 60, 90, 90], [10, 10, 40, 40]])
    scores = torch.tensor([0.85, 0.9, 0.5, 0.9])
    labels = torch.tensor([0, 0, 0, 1])
    keep = suppress_parts(boxes, scores, labels, ratio=0.9)
    # Box 1 (part, 0.9) lies in box 0 (0.85 >= 0.9 * 0.9): dropped. Box 2 too. Box 3 is another name.
    assert keep.tolist() == [True, False, False, True]
    assert suppress_parts(boxes, torch.tensor([0.5, 0.9, 0.5, 0.9]), labels, 0.9).tolist() == [True, True, False, True]


def test_part_suppression_compares_each_detection_with_its_own_label_only():
    """The same answer as comparing every pair (what it did: at threshold 0 with 2,000 names, an
    n x n comparison of 20,000 candidates took 10 s a call), on labels of very different sizes."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(600, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 5 + torch.rand(600, 2, generator=g) * 120], dim=1)
    boxes[300:] = boxes[:300]  # the same boxes under other labels
    scores = torch.rand(600, generator=g)
    labels = torch.cat([torch.zeros(250, dtype=torch.long), torch.randint(1, 40, (350,), generator=g)])
    labels = labels[torch.randperm(600, generator=g)]
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    dense = ((inter >= 0.9 * area[:, None]) & (area[None, :] > area[:, None]) & (labels[:, None] == labels[None, :])
             & (scores[None, :] >= 0.9 * scores[:, None])).any(dim=1)
    keep = suppress_parts(boxes, scores, labels, 0.9)
    assert dense.any() and torch.equal(keep, ~dense)


# --- the switch from selective search to the RPN --------------------------------------------


def _tiny(rpn_trained: bool) -> OpenVocabDetector:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return OpenVocabDetector(PRESETS["tiny"].replace(rpn_trained=rpn_trained)).eval()  # tiny: rpn_trained=True


@pytest.mark.parametrize("trained", [False, True])
def test_proposal_source_follows_the_checkpoint(tmp_path, trained):
    from torchvision.models.detection.transform import resize_boxes

    from detector.checkpoint import save_checkpoint
    from detector.presets import load_detector
    from detector.proposals import DETECTION

    img, _ = _rectangles_image()
    save_checkpoint(_tiny(trained), tmp_path / "m")
    model = load_detector(str(tmp_path / "m"))
    assert model.config.rpn_trained is trained and model.uses_selective_search is (not trained)
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    enc = model.encode([x])
    ss = resize_boxes(selective_search(img, DETECTION), (192, 256), enc.image_sizes[0])
    if trained:  # the RPN's proposals: many, and not selective search's
        assert len(enc.proposals[0]) > len(ss)
    else:  # exactly selective search's boxes, unrefined (the box regressor is untrained too)
        assert torch.allclose(enc.proposals[0], ss) and torch.equal(enc.boxes[0], enc.proposals[0])
        assert torch.equal(enc.objectness[0], torch.ones(len(ss)))


def test_unknown_region_scorer_is_an_error():
    with pytest.raises(ValueError, match="region_scorer"):
        PRESETS["tiny"].replace(region_scorer="nope")


# --- ImageNet -> vocabulary mapping -----------------------------------------------------------


@pytest.fixture(scope="session")
def offline_predictor():
    return Predictor.from_pretrained("offline", device="cpu")


def _one_hot(index: int) -> torch.Tensor:
    p = torch.zeros(1, 1000)
    p[0, index] = 1.0
    return p


def test_mapping_ranks_the_constructed_name_first(offline_predictor):
    from detector.imagenet_scorer import imagenet_class_names

    scorer = offline_predictor.region_scorer
    assert scorer.kind == "imagenet"
    classes = imagenet_class_names()
    distractors = ["dog", "car", "person", "chair", "banana", "laptop", "bird", "bottle", "horse", "book"]
    for imagenet_class, name in [("tabby", "cat"), ("coffee mug", "mug"), ("tripod", "tripod"),
                                 ("space shuttle", "space shuttle"), ("missile", "rocket"), ("wall clock", "clock")]:
        names, emb = offline_predictor.embed([name, *distractors])
        probs = scorer.probabilities(_one_hot(classes.index(imagenet_class)), emb)
        assert int(probs[0].argmax()) == 0, (imagenet_class, dict(zip(names, probs[0].tolist())))
        assert probs[0, 0] > 0.5


def test_scores_do_not_depend_on_the_rest_of_the_vocabulary(offline_predictor):
    scorer = offline_predictor.region_scorer
    g = torch.Generator().manual_seed(0)
    regions = torch.softmax(torch.randn(5, 1000, generator=g) * 4, dim=-1)
    names, alone = offline_predictor.embed(["cat"])
    many_names, many = offline_predictor.embed(["dog", "cat", "car", "banana", "violin"])
    # Names that share no ImageNet class with "cat" leave its score as it is (close names compete
    # for shared classes instead: tests/test_name_mapping.py).
    assert torch.allclose(scorer.probabilities(regions, alone, names=names)[:, 0],
                          scorer.probabilities(regions, many, names=many_names)[:, 1], atol=1e-3)
    # A crop of nothing (a flat ImageNet distribution) scores low for every name.
    flat = torch.full((1, 1000), 1e-3)
    assert scorer.probabilities(flat, many, names=many_names).max() < 0.05


# --- acceptance on real photographs (<= 256 px) ----------------------------------------------


def _small(name: str, side: int = 256) -> tuple[np.ndarray, float]:
    from skimage import data

    im = getattr(data, name)()
    s = side / max(im.shape[:2])
    return np.array(Image.fromarray(im).resize((round(im.shape[1] * s), round(im.shape[0] * s)))), s


def test_offline_model_finds_the_cat_and_not_cats_everywhere(offline_predictor):
    from torchvision.ops import box_iou

    info = offline_predictor.info()
    assert info["region_scorer"] == "imagenet" and info["proposals"].startswith("selective search")
    assert "person" in info["capabilities"]
    import html

    from app.ui.model_tab import model_header

    assert html.escape(info["capabilities"]) in model_header({"source": "offline", "note": "", **info})  # the banner
    from app.ui.model_tab import model_summary

    summary = model_summary({"source": "offline", **info}).casefold()  # the Model tab says each thing once
    assert summary.count("recognises") == 1 and summary.count("rpn") == 1  # was "(RPN not trained yet) (RPN untrained)"
    assert "imagenet-like objects" in summary
    # Trained on tags (boxes still from selective search): nothing says the boxes wait for that training.
    tagged = {"source": "run", "note": "", **info, "trained_class_names": 7}
    for text in (model_header(tagged), model_summary(tagged)):
        assert "until the detector is trained" not in text and "tags teach names, not boxes" in model_summary(tagged)
    chelsea, s = _small("chelsea")
    det = offline_predictor.predict(chelsea, "cat, dog, cup, rocket")[0]
    assert len(det) >= 1 and det["class_name"][0] == "cat" and det.confidence[0] >= 0.5
    truth = torch.tensor([[0, 0, 430, 300]], dtype=torch.float) * s
    assert float(box_iou(torch.from_numpy(det.xyxy[:1]).float(), truth)) >= 0.5
    for other in ("coffee", "rocket"):
        img, _ = _small(other)
        assert len(offline_predictor.predict(img, "cat")[0]) == 0, other


def test_offline_model_names_the_rocket_and_the_cup(offline_predictor):
    for image, name in [("rocket", "rocket"), ("coffee", "cup")]:
        img, _ = _small(image)
        det = offline_predictor.predict(img, "cat, dog, cup, rocket, car, person", score_threshold=0.0)[0]
        assert det["class_name"][0] == name, (image, list(zip(det["class_name"][:5], det.confidence[:5])))


def test_roi_scores_of_the_whole_image_match_the_classifier(offline_predictor):
    # RoI mode pools the network's own final map over the box: for the whole-image box that is the
    # classifier's global average pooling, so the distribution equals the plain forward pass
    # (checked at the finest level only: one level, the image at the detector's input size).

    # The box-fit factor (`fit_factors`, tested below) is switched off: it is a separate factor.
    scorer = offline_predictor.region_scorer
    assert scorer.mode == "roi" and scorer.levels == 3
    saved = scorer.first_level, scorer.fit_coverage, scorer.fit_precision
    scorer.levels, scorer.first_level, scorer.fit_coverage, scorer.fit_precision = 1, 0, 0.0, 0.0
    try:
        _check_whole_image_roi(scorer)
    finally:
        scorer.levels = 3
        scorer.first_level, scorer.fit_coverage, scorer.fit_precision = saved


def _check_whole_image_roi(scorer):
    import torch.nn.functional as F

    chelsea, _ = _small("chelsea", side=320)
    image = torch.from_numpy(chelsea).permute(2, 0, 1).float() / 255
    h, w = image.shape[-2:]
    whole = torch.tensor([[0.0, 0.0, float(w), float(h)]])
    roi = scorer.embed_regions(image, whole)[0]
    s = min(scorer.min_size / min(h, w), scorer.max_size / max(h, w))
    x = F.interpolate(image[None], scale_factor=s, mode="bilinear", align_corners=False, recompute_scale_factor=True)
    with torch.inference_mode():
        direct = scorer.class_distribution(x)[0]
    assert int(roi.argmax()) == int(direct.argmax())
    assert (roi - direct).abs().sum() < 0.2
    # A box on part of the image gives a different distribution (the pooling is restricted to it).
    part = scorer.embed_regions(image, torch.tensor([[0.0, 0.0, w / 4, h / 4]]))[0]
    assert (part - roi).abs().sum() > 0.2


def test_roi_levels_read_big_boxes_at_coarse_scale(offline_predictor):
    # A frame-filling cat read at the classifier's own scale (224 px) is a confident cat; read at
    # the detector's input size (640 px short side) it is mostly fur and the cat mass drops.
    scorer = offline_predictor.region_scorer
    names, emb = offline_predictor.embed(["cat"])
    chelsea, _ = _small("chelsea")
    image = torch.from_numpy(chelsea).permute(2, 0, 1).float() / 255
    whole = torch.tensor([[0.0, 0.0, float(image.shape[-1]), float(image.shape[-2])]])
    saved = scorer.fit_coverage, scorer.fit_precision
    scorer.fit_coverage = scorer.fit_precision = 0.0  # the level rule alone (the fit factor is tested below)
    try:
        p_levels = float(scorer.probabilities(scorer.embed_regions(image, whole), emb)[0, 0])
        scorer.levels = 1
        p_fine = float(scorer.probabilities(scorer.embed_regions(image, whole), emb)[0, 0])
    finally:
        scorer.levels = 3
        scorer.fit_coverage, scorer.fit_precision = saved
    assert p_levels >= 0.8 and p_levels > p_fine


def test_box_fit_prefers_the_object_to_the_object_with_its_neighbourhood(offline_predictor):
    # Issue 20 (boxes that fit): a box holding the cat and as much gravel beside it reads "cat"
    # from its pooled features almost as well as the cat's own box; the fit factor (the share of
    # the box inside the cat's activation mask) makes the cat's own box win clearly.
    from skimage import data

    scorer = offline_predictor.region_scorer
    _, emb = offline_predictor.embed(["cat"])
    canvas = np.array(Image.fromarray(data.gravel()).convert("RGB").resize((384, 192)))
    canvas[40:145, 20:170] = np.array(Image.fromarray(data.chelsea()).resize((150, 105)))
    image = torch.from_numpy(canvas).permute(2, 0, 1).float() / 255
    boxes = torch.tensor([[20.0, 40.0, 170.0, 145.0], [20.0, 40.0, 320.0, 145.0]])  # cat; cat + gravel

    def cat_scores():
        return scorer.probabilities(scorer.embed_regions(image, boxes), emb)[:, 0].tolist()

    saved = scorer.fit_coverage, scorer.fit_precision
    fitted = cat_scores()
    scorer.fit_coverage = scorer.fit_precision = 0.0
    try:
        plain = cat_scores()
    finally:
        scorer.fit_coverage, scorer.fit_precision = saved
    assert fitted[0] >= 0.3 and fitted[0] > 1.3 * fitted[1], (fitted, plain)
    assert fitted[0] / fitted[1] > plain[0] / plain[1]
