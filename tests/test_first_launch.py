"""Issue: a useful model on first launch — COCO localisation + CLIP region scores + ensemble."""

import os

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


def test_trained_names_of_a_model_proposing_with_selective_search_are_scored_by_the_region_scorer_alone(
        small_image):
    """A tags-only run on the offline model trains a box head on selective-search boxes; its latest
    checkpoint (what the CLI's run folder and a run too small for held-out images serve) had kept
    w = 0.35 for the tagged names, and that head took "helmet" on the astronaut from 0.78 to 0."""
    p = _clip_tiny(rpn_trained=False, ensemble_weight_untrained=1.0, trained_class_names=["flag"])
    assert p.model.ensemble_weights() == (1.0, 1.0) and not p.model.head_contributes
    assert p.info()["ensemble"]["w_trained"] == 1.0
    assert torch.equal(p.clip_weights(["flag", "person"]), torch.ones(2))
    before = p.predict(small_image, "person, flag", max_detections=10)[0]
    clf = p.model.roi_heads.box_predictor.cls_score
    with torch.no_grad():  # scramble the head the tags trained: no name's score may change
        clf.linear.weight.mul_(-3.0)
    p.cache_size = 0
    again = p.predict(small_image, "person, flag", max_detections=10)[0]
    assert len(before) and np.allclose(before.confidence, again.confidence, atol=1e-5)
    p.model.config.rpn_trained = True  # once boxes trained the RPN, the head counts as configured
    assert p.model.ensemble_weights() == (0.35, 1.0) and p.model.head_contributes


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
    assert service.serving.source == "offline"  # the model served, not the rule that chose it


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_hub_probe_switches_the_process_offline_fast(monkeypatch, caplog):
    import logging
    import time

    from huggingface_hub import constants

    from detector import hub

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hub.hub_unreachable_reason() is not None
    t = time.perf_counter()
    with caplog.at_level(logging.INFO):
        assert hub.go_offline_if_unreachable() is True
    assert time.perf_counter() - t < 5
    assert hub.offline() and constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"
    assert "checking the Hub" in caplog.text and "Hub unreachable" in caplog.text
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{_free_port()}")  # behind a proxy: no direct probe
    assert hub.go_offline_if_unreachable() is False and not constants.HF_HUB_OFFLINE


def test_shipped_imagenet_embeddings_match_the_texts_and_encoder():
    from detector.imagenet_embeddings import SHIPPED, shipped_embeddings
    from detector.imagenet_scorer import imagenet_class_texts

    texts = imagenet_class_texts()
    emb = shipped_embeddings("minilm:all-MiniLM-L6-v2", texts)
    assert emb is not None and emb.shape == (1000, 384), "regenerate: python -m detector.imagenet_embeddings"
    assert SHIPPED.stat().st_size < 1_000_000
    assert shipped_embeddings("minilm:other", texts) is None  # another encoder: not used
    assert shipped_embeddings("minilm:all-MiniLM-L6-v2", texts[:-1] + ["changed"]) is None  # other texts
    from detector.text_encoders import build_text_encoder

    fresh = build_text_encoder("minilm").encode(texts[:3]).float()
    assert torch.allclose(emb[:3], fresh, atol=2e-3)  # fp16 of the same vectors


@pytest.mark.slow
def test_first_launch_without_network_serves_within_a_bound(tmp_path):
    """No network, HF_HUB_OFFLINE unset, empty caches: the Hub probe fails once and fast, the
    offline model loads with its shipped ImageNet embeddings, the port answers, and the log says
    why. The bound is loose for a loaded test machine; docs/offline_zero_shot.md has the time."""
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_free_port()}", HF_HOME=str(tmp_path / "hf"),
               TORCH_HOME=str(tmp_path / "torch"), OVD_CACHE_DIR=str(tmp_path / "cache"), GRADIO_ANALYTICS_ENABLED="False")
    log = (tmp_path / "log.txt").open("w")
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--data-dir", str(tmp_path / "data")],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while time.perf_counter() - t < 180 and proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        elapsed = time.perf_counter() - t
        text = (tmp_path / "log.txt").read_text()
        assert proc.poll() is None, text[-3000:]
        assert elapsed < 180, text[-3000:]
        assert "checking the Hub" in text and "Hub unreachable" in text, text[-3000:]
        assert "embedding 1000 class texts" not in text  # the shipped embeddings were used
        print(f"first launch without network: port answered after {elapsed:.1f} s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
