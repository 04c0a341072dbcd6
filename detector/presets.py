"""Named starting points and the one function that turns any model *source* into a detector.

A source is a preset name (below), a local checkpoint folder / `.safetensors` file, or a
Hugging Face Hub repo id holding `config.json` + `model.safetensors`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_checkpoint
from .config import DetectorConfig
from .hub import download_snapshot, looks_like_repo_id

log = logging.getLogger(__name__)

PRESETS: dict[str, DetectorConfig] = {
    # Real weights, no network: ImageNet EfficientNet-Lite0 (frozen) + all-MiniLM-L6-v2 names.
    # Scores are Detic's sqrt(class score * objectness) once the RPN is trained (docs/experiments.md).
    # Before any training: selective-search proposals, scored by the same network's ImageNet
    # head mapped onto the vocabulary (detector.imagenet_scorer); see docs/offline_zero_shot.md.
    "offline": DetectorConfig(backbone="efficientnet_lite0", text_encoder="minilm", embed_dim=384,
                              region_scoring=True, region_scorer="imagenet", region_top_k=50,
                              part_suppression=0.9, mult_proposal_score=True,
                              # calibrated on the tune half of bench/offline_zero_shot.py (issue 20)
                              score_threshold=0.2,
                              # its head learns only from the person's tags: names it was never
                              # trained on keep the ImageNet scores alone (w = 1)
                              ensemble_weight_untrained=1.0),
    # The classic: ResNet-50 (ImageNet weights when downloadable) + CLIP ViT-B/32 names.
    "resnet50-clip": DetectorConfig(
        backbone="resnet50", text_encoder="clip", embed_dim=512,
        text_encoder_options={"arch": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}, mult_proposal_score=True,
    ),
    # Works before any training (issue: a useful model on first launch): COCO-trained
    # localisation (torchvision Faster R-CNN v2) + CLIP ViT-B/32 region scores, ensembled with
    # the zero-shot head once it has been trained. Needs internet (or a filled cache) once.
    "coco-clip": DetectorConfig(
        backbone="resnet50", init_weights="torchvision_coco_frcnn_v2", fpn_norm="batchnorm", rpn_head_convs=2,
        head_norm="batchnorm", box_head_convs=4, box_head_fcs=1, representation_size=1024,
        text_encoder="clip", embed_dim=512,
        text_encoder_options={"arch": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
        region_scoring=True, mult_proposal_score=True, min_size=800, max_size=1333,
    ),
    # Tiny random model (tiny CNN + tiny open_clip text tower): tests and smoke runs. It exercises
    # the RPN code path (rpn_trained=True although its RPN is random); tests of the
    # selective-search path set rpn_trained=False.
    "tiny": DetectorConfig(
        rpn_trained=True,
        backbone="tiny", text_encoder="tiny_clip", embed_dim=64, text_encoder_options={"dim": 64},
        fpn_channels=32, box_head_convs=1, representation_size=128, min_size=128, max_size=256,
        anchor_sizes=(16, 32, 64, 128, 256), rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150,
        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=150, roi_batch_size_per_image=64,
        score_threshold=0.05,
    ),
}
DEFAULT_SOURCE = "offline"
FIRST_CHOICE = "coco-clip"  # what the app serves when its weights can be fetched


def resolve_source(source: str | Path | None):
    """-> ("preset", DetectorConfig) or ("checkpoint", local path). Raises with a clear message."""
    source = DEFAULT_SOURCE if source in (None, "") else source
    if isinstance(source, str) and source in PRESETS:
        return "preset", PRESETS[source].replace()
    path = Path(source).expanduser()
    if path.exists():
        return "checkpoint", path
    if isinstance(source, str) and looks_like_repo_id(source):
        return "checkpoint", download_snapshot(source, [CONFIG_NAME, WEIGHTS_NAME, "*.json"])
    raise FileNotFoundError(
        f"model source {str(source)!r} is not a preset ({', '.join(PRESETS)}), an existing local "
        "folder, or a Hugging Face Hub id like 'owner/name'"
    )


def load_detector(source: str | Path | None = None, device: str = "cpu"):
    """An OpenVocabDetector from any source, in eval mode on `device`."""
    from .model import OpenVocabDetector

    kind, value = resolve_source(source)
    if kind == "preset":  # random parts are seeded, so a preset is the same model everywhere
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = OpenVocabDetector(value)
        if value.init_weights == "torchvision_coco_frcnn_v2":
            from .coco_weights import init_from_torchvision_coco

            model.init_report = init_from_torchvision_coco(model)
            if model.init_report is None:
                log.warning("COCO detector weights unavailable: '%s' localisation is random", source)
            else:
                model.config.rpn_trained = True  # COCO-trained RPN and box regression
                model.backbone_pretrained = True  # and a COCO-trained backbone (ImageNet, then COCO)
        return model.to(device).eval()
    return load_checkpoint(value, map_location=device)
