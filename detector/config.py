"""One dataclass that fully describes a detector, so a checkpoint is `config.json` + weights.

Everything that changes the architecture or the inference behaviour lives here; nothing about
the vocabulary does (vocabularies are swapped at run time, see `detector.vocabulary`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_LABEL_RULES = ("max_size", "image_box", "max_score")  # the one list (see detector.image_labels)
IMAGE_LABEL_SCOPES = ("box_head", "classifier")  # what the image-label loss trains (detector.image_labels)
# Head capacity (Vasconcelos et al.; detector.capacity, measured by bench/reuse.py).
# The neck / RPN / box-head fields a preset sets; nothing else of the config.
HEAD_FIELDS = ("fpn_channels", "rpn_head_convs", "box_head_convs", "box_head_fcs", "representation_size")
HEAD_PRESETS: dict[str, dict[str, int]] = {
    # 1 conv + 1 fc (256) box head on a 128-channel FPN: the CPU benchmarks' heads
    "light": dict(fpn_channels=128, rpn_head_convs=1, box_head_convs=1, box_head_fcs=1, representation_size=256),
    # torchvision's Faster R-CNN v2 head: FPN 256, 4 conv + 1 fc (1024); the presets' default
    "standard": dict(fpn_channels=256, rpn_head_convs=1, box_head_convs=4, box_head_fcs=1, representation_size=1024),
    # deeper RPN head, 6 convs + 2 fcs in the box head
    "heavy": dict(fpn_channels=256, rpn_head_convs=2, box_head_convs=6, box_head_fcs=2, representation_size=1024),
}
# "frozen": Vasconcelos' recommendation; "last_stages": the body's last two of four stages train
BACKBONE_CHOICES: dict[str, int] = {"frozen": 0, "last_stages": 2, "all": 4}
# Keys older checkpoints wrote; the image-label rule, weight and scope are now arguments of
# `OpenVocabDetector.image_label_loss` (a training choice, not part of the model).
LEGACY_KEYS = ("image_label_rule", "image_label_weight", "image_label_scope")


@dataclass
class DetectorConfig:
    # --- backbone (Vasconcelos et al.: frozen pre-trained backbone, capacity in the heads)
    backbone: str = "efficientnet_lite0"  # see detector.backbones.BACKBONES
    backbone_weights: str = "default"  # "default" (pretrained when available) or "none"
    freeze_backbone: bool = True  # frozen weights (batch-norm statistics are frozen in any case)
    backbone_trainable_stages: int = 4  # with freeze_backbone=False: the last N of the body's 4 stages train
    # --- neck / heads capacity
    fpn_channels: int = 256
    fpn_norm: str = "none"  # "none" or "batchnorm" (torchvision's Faster R-CNN v2)
    rpn_head_convs: int = 1
    head_norm: str = "groupnorm"  # box-head conv norm: "groupnorm", "batchnorm" or "none"
    box_head_convs: int = 4  # conv layers before the fcs (torchvision's FastRCNNConvFCHead)
    box_head_fcs: int = 1
    representation_size: int = 1024
    # --- RPN
    # Whether the RPN (and the class-agnostic box regression, trained by the same box losses) has
    # ever been trained: from boxes, from a COCO init or by AlignDet pre-training. Until then
    # proposals come from selective search (detector.proposals) and boxes are not refined.
    rpn_trained: bool = False
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 300  # the 4-conv box head costs O(proposals); see bench/detect.py
    rpn_nms_thresh: float = 0.7
    rpn_batch_size_per_image: int = 256
    roi_batch_size_per_image: int = 512
    # --- zero-shot classifier (Detic)
    text_encoder: str = "minilm"  # see detector.text_encoders.TEXT_ENCODERS
    text_encoder_options: dict[str, Any] = field(default_factory=dict)
    embed_dim: int = 384  # must equal the text encoder's output dimension
    prompt: str = "a {}"
    temperature: float = 50.0
    cls_prior_prob: float = 0.01  # initial sigmoid score; sets the learned bias
    federated_threshold: int = 50  # use federated loss when the vocabulary is larger
    federated_num_classes: int = 50
    mult_proposal_score: bool = False  # Detic: score = sqrt(cls * objectness)
    # --- region scores, ensembled with the head (F-VLM): p_head^(1-w) * p_region^w
    region_scoring: bool = False
    region_scorer: str = "clip"  # "clip" (needs a CLIP text encoder) or "imagenet" (packaged, offline)
    region_top_k: int = 100  # proposals scored by CLIP per image (the others get p_clip = 0)
    region_context: float = 1.5  # crop = box grown by this factor about its centre
    ensemble_weight_trained: float = 0.35  # w for names in trained_class_names
    ensemble_weight_untrained: float = 0.65  # w for other names; w = 1 before any training
    init_weights: str = ""  # "torchvision_coco_frcnn_v2": backbone/FPN/RPN/box head from COCO
    # --- image-label training (Detic): top proposals per image (WS_NUM_PROPS); rule, weight and scope are the run's
    image_label_num_proposals: int = 128
    # --- inference
    score_threshold: float = 0.3
    nms_threshold: float = 0.5
    max_detections: int = 100
    part_suppression: float = 0.0  # > 0: drop boxes inside a same-name box scoring >= this x theirs
    min_size: int = 640
    max_size: int = 1066
    # --- bookkeeping: class names this checkpoint's classifier was trained on
    trained_class_names: list[str] = field(default_factory=list)
    # how the neck / RPN / box head were pre-trained without labels, e.g. "aligndet: 240 images,
    # 300 iterations" (train.pretrain); empty when they were not
    pretrained_heads: str = ""
    # whether the backbone started from pre-trained weights (ImageNet, or a COCO detector's): set
    # when a model is built with weights (`backbone_weights="default"`) and kept by checkpoints,
    # which rebuild with "none" and load their own. None: not recorded (checkpoints from before).
    backbone_pretrained: bool | None = None

    def __post_init__(self) -> None:
        self.anchor_sizes = tuple(int(s) for s in self.anchor_sizes)
        if self.region_scorer not in ("clip", "imagenet"):
            raise ValueError("region_scorer must be 'clip' or 'imagenet'")
        if not 1 <= self.backbone_trainable_stages <= 4:
            raise ValueError("backbone_trainable_stages must be 1-4 (the body has four stages)")
        if self.image_label_num_proposals < 1:
            raise ValueError("image_label_num_proposals must be at least 1")
        if not 0.0 <= self.score_threshold <= 1.0 or not 0.0 <= self.nms_threshold <= 1.0:
            raise ValueError("score_threshold and nms_threshold must lie in [0, 1]")
        if self.max_detections < 1 or self.min_size < 16 or self.max_size < self.min_size:
            raise ValueError("max_detections must be at least 1, and min_size at least 16 and no larger than max_size")

    # JSON round trip ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["anchor_sizes"] = list(self.anchor_sizes)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in LEGACY_KEYS}
        d.setdefault("rpn_trained", True)  # checkpoints from before the flag always used their RPN
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown detector config keys: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> DetectorConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError("config JSON must be an object")
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str | Path) -> DetectorConfig:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def replace(self, **changes: Any) -> DetectorConfig:
        return dataclasses.replace(self, **changes)
