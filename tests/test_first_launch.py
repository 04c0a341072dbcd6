"""Issue: a useful model on first launch — COCO localisation + CLIP region scores + ensemble."""

import numpy as np
import pytest
import torch

from detector import OpenVocabDetector, Predictor
from detector.presets import PRESETS
from detector.region_scorer import ClipRegionScorer, class_weights, ensemble, region_probabilities
from detector.text_encoders import build_text_encoder


def test_region_scorer_ranks_the_name_built_to_match():
    clip = build_text_encoder("tiny_clip", {"dim": 64})
    scorer = ClipRegionScorer(clip, context=1.2)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 96, 128, generator=g)
    boxes = torch.tensor([[10.0, 10.0, 50.0, 60.0], [60.0, 30.0, 120.0, 90.0]])
    regions = scorer.embed_regions(image, boxes)
    assert regions.shape == (2, 64) and not torch.allclose(regions[0], regions[1])
    # Names whose text embeddings are random, except "target", set to region 0's embedding.
    names = torch.nn.functional.normalize(torch.randn(5, 64, generator=g), dim=-1)
    names[3] = regions[0]
    background = torch.nn.functional.normalize(torch.randn(64, generator=g), dim=-1)
    probs = region_probabilities(regions, names, background)
    assert probs.shape == (2, 5) and int(probs[0].argmax()) == 3
    assert probs[0, 3] > 0.9 and (probs.sum(1) <= 1 + 1e-5).all()
    # Same region again -> same embedding (the crop is deterministic).
    assert torch.allclose(scorer.embed_regions(image, boxes[:1]), regions[:1], atol=1e-5)


def test_ensemble_weights_follow_training_state():
    assert class_weights(["cat", "dog"], [], 0.35, 0.65).tolist() == [1.0, 1.0]  # untrained head: CLIP only
    w = class_weights(["Cat", "dog"], ["cat"], 0.35, 0.65)
    assert torch.allclose(w, torch.tensor([0.35, 0.65]))
    p_head, p_clip = torch.tensor([[0.8, 0.8]]), torch.tensor([[0.2, 0.2]])
    out = ensemble(p_head, p_clip, w)
    assert torch.allclose(out, torch.tensor([[0.8**0.65 * 0.2**0.35, 0.8**0.35 * 0.2**0.65]]))
    assert torch.allclose(ensemble(p_head, p_clip, torch.ones(2)), p_clip)


def _clip_tiny(**changes):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = OpenVocabDetector(PRESETS["tiny"].replace(region_scoring=True, score_threshold=0.0, **changes))
    return Predictor(model, device="cpu")


def test_untrained_head_is_ignored_then_trained_names_use_it(small_image):
    p = _clip_tiny()
    assert p.info()["region_scoring"] and p.info()["ensemble"]["w_trained"] == 0.35
    before = p.predict(small_image, "person, flag", max_detections=10)[0]
    assert len(before) == 10
    clf = p.model.roi_heads.box_predictor.cls_score
    with torch.no_grad():  # scramble the head: with w = 1 nothing may change
        clf.linear.weight.mul_(-3.0)
    p.cache_size = 0
    again = p.predict(small_image, "person, flag", max_detections=10)[0]
    assert np.allclose(before.confidence, again.confidence, atol=1e-5)
    p.model.config.trained_class_names = ["person"]
    trained = p.predict(small_image, "person, flag", max_detections=10)[0]
    assert not np.allclose(before.confidence, trained.confidence, atol=1e-3)


def test_ensemble_settings_round_trip_through_checkpoint(tmp_path, small_image):
    p = _clip_tiny(ensemble_weight_trained=0.2, ensemble_weight_untrained=0.7, trained_class_names=["flag"])
    p.save_pretrained(tmp_path / "m")
    q = Predictor.from_pretrained(str(tmp_path / "m"), device="cpu")
    cfg = q.model.config
    assert (cfg.region_scoring, cfg.ensemble_weight_trained, cfg.ensemble_weight_untrained,
            cfg.trained_class_names) == (True, 0.2, 0.7, ["flag"])
    assert torch.equal(q.clip_weights(["flag", "person"]), torch.tensor([0.2, 0.7]))
    a = p.predict(small_image, "person, flag", max_detections=5)[0]
    b = q.predict(small_image, "person, flag", max_detections=5)[0]
    assert np.allclose(a.confidence, b.confidence) and np.allclose(a.xyxy, b.xyxy)


def test_torchvision_coco_weights_map_every_key():
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_V2_Weights, fasterrcnn_resnet50_fpn_v2

    from detector.coco_weights import init_from_torchvision_coco

    torch.manual_seed(0)
    ours = OpenVocabDetector(PRESETS["coco-clip"].replace(backbone_weights="none"))
    theirs = fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None).state_dict()
    report = init_from_torchvision_coco(ours, theirs)
    assert report["missing"] == report["missing_by_design"] and len(report["missing"]) == 5  # classifier (3) + name mapping (2)
    assert all(k.startswith(("roi_heads.box_predictor.cls_score.", "name_adapters.")) for k in report["missing"])
    assert sorted(report["unexpected"]) == sorted(report["unexpected_by_design"])
    assert {k for k in report["unexpected"] if not k.endswith("num_batches_tracked")} == {
        "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias"}
    state = ours.state_dict()
    for key in ("backbone.body.layer3.2.conv2.weight", "backbone.fpn.layer_blocks.1.0.weight",
                "rpn.head.conv.1.0.weight", "roi_heads.box_head.3.0.weight", "roi_heads.box_head.5.weight"):
        assert torch.equal(state[key], theirs[key]), key
    categories = FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1.meta["categories"]
    fg = [i for i, c in enumerate(categories) if c not in ("__background__", "N/A")]
    assert len(fg) == 80
    expected = theirs["roi_heads.box_predictor.bbox_pred.weight"].view(91, 4, -1)[fg].mean(0)
    assert torch.allclose(state["roi_heads.box_predictor.bbox_pred.weight"], expected)


def test_mapping_refuses_partial_loads():
    from detector.coco_weights import WeightMappingError, map_frcnn_state

    ours = {"a.weight": torch.zeros(2), "roi_heads.box_predictor.cls_score.bias": torch.zeros(())}
    with pytest.raises(WeightMappingError, match="1 missing"):
        map_frcnn_state(ours, {"b.weight": torch.zeros(2)}, ["__background__", "x"])


def test_app_falls_back_to_offline_model_with_a_reason(tmp_path, caplog):
    from app.service import AppService

    service = AppService(tmp_path, model="auto")
    assert service.predictor.config.backbone == "efficientnet_lite0"
    assert service.serving.note.startswith("offline model: coco-clip unavailable")
    assert "\n" not in service.serving.note
