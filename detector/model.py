"""The open-vocabulary two-stage detector: torchvision's GeneralizedRCNN with Detic's head.

Three entry points share one backbone/RPN/RoI stack:
- `forward(images, targets, class_embeddings)`: box-labelled training (standard loss dict) or
  inference (list of {boxes, scores, labels}); labels are 0-based indices into the vocabulary.
- `image_label_loss(images, labels, class_embeddings, rule=, weight=, scope=)`: Detic's
  image-label loss (no RPN or box-regression loss; by default it trains the classifier, the box
  head and the neck, as Detic does).
- `encode(images)` + `classify(regions, class_embeddings)`: inference split at the point where
  the vocabulary enters, so a new vocabulary or threshold re-uses the cached image work.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign

from .backbones import build_backbone, count_parameters
from .classifier import ZeroShotBoxPredictor
from .config import IMAGE_LABEL_RULES, DetectorConfig
from .image_labels import (
    DEFAULT_RULE,
    DEFAULT_SCOPE,
    DEFAULT_WEIGHT,
    Choice,
    check_rule,
    check_scope,
    choice_stats,
    choose_proposals,
    image_label_loss,
    negative_terms,
    with_image_box,
)
from .name_adapters import NameAdapters
from .roi_heads import ZeroShotRoIHeads, select_detections, select_detections_batched
from .rpn import ScoredRPN

# Image values held as floats at once before the resize: eight 4000 x 4000 photos in one group had
# taken 3.6 GB (two float copies of the whole group); now at most ~128 MB of floats above the uint8 input.
FLOAT_PIXELS = 1 << 25


class DetectorTransform(GeneralizedRCNNTransform):
    """Normalise + batch. Resizes at inference only: in training the data pipeline owns the scale
    (jitter, 640 px for box batches, 320 px for image-label batches, as in Detic)."""

    def resize(self, image, target=None):
        if self.training:
            return image, target
        return super().resize(image, target)

    def from_uint8(self, groups: list[tuple[list[int], torch.Tensor]], count: int) -> ImageList:
        """What `forward` does image by image at inference, for a batch already on the device as
        uint8: `groups` are (image indices, [G, H, W, 3] uint8) of equal-shape images. One
        normalise + resize per group (not per image), one pad (or one copy per group)."""
        device = groups[0][1].device
        mean = torch.tensor(self.image_mean, device=device).mul_(255)[:, None, None]
        inv_std = torch.tensor(self.image_std, device=device).mul_(255).reciprocal_()[:, None, None]
        sizes: list[tuple[int, int]] = [(0, 0)] * count
        outs = []
        for idx, t in groups:
            h, w = t.shape[1:3]
            scale = min(float(self.min_size[-1]) / min(h, w), float(self.max_size) / max(h, w))
            step = max(1, FLOAT_PIXELS // (3 * h * w))  # at full size as floats, a few at a time
            parts = [F.interpolate(t[i : i + step].permute(0, 3, 1, 2).float().sub_(mean).mul_(inv_std),  # (t/255-mean)/std
                                   scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False)
                     for i in range(0, len(t), step)]
            x = parts[0] if len(parts) == 1 else torch.cat(parts)
            outs.append((idx, x))
            for i in idx:
                sizes[i] = (int(x.shape[-2]), int(x.shape[-1]))
        stride = self.size_divisible
        height = -(-max(s[0] for s in sizes) // stride) * stride
        width = -(-max(s[1] for s in sizes) // stride) * stride
        if len(outs) == 1 and outs[0][0] == list(range(count)):
            x = outs[0][1]
            return ImageList(F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2])), sizes)
        batch = outs[0][1].new_zeros(count, 3, height, width)
        for idx, x in outs:
            batch[idx, :, : x.shape[-2], : x.shape[-1]] = x
        return ImageList(batch, sizes)


def _norm_layer(kind: str):
    if kind == "batchnorm":
        return nn.BatchNorm2d
    if kind == "groupnorm":
        return lambda c: nn.GroupNorm(min(32, max(1, c // 8)), c)
    return None


@contextmanager
def eval_mode(*modules: nn.Module):
    """Temporarily put `modules` in eval mode, restoring each one's previous mode."""
    previous = [m.training for m in modules]
    for m in modules:
        m.train(False)
    try:
        yield
    finally:
        for m, mode in zip(modules, previous):
            m.train(mode)


@dataclass
class EncodedImages:
    """Everything about a batch of images that does not depend on the vocabulary."""

    proposals: list[torch.Tensor]  # per image [N, 4], network-input coordinates
    objectness: list[torch.Tensor]  # per image [N]
    box_features: list[torch.Tensor]  # per image [N, representation_size]
    boxes: list[torch.Tensor]  # per image [N, 4] refined (class-agnostic) boxes, input coords
    image_sizes: list[tuple[int, int]]  # network-input sizes
    original_sizes: list[tuple[int, int]]
    region_embeddings: list[torch.Tensor | None] | None = None  # region-scorer features of the top boxes
    pooled: list[torch.Tensor] | None = None  # per image [N, C, 7, 7] RoI-aligned neck features (on request)

    def select(self, i: int) -> EncodedImages:
        regions = [self.region_embeddings[i]] if self.region_embeddings is not None else None
        pooled = [self.pooled[i]] if self.pooled is not None else None
        return EncodedImages(*[[f[i]] for f in (self.proposals, self.objectness, self.box_features,
                                                  self.boxes, self.image_sizes, self.original_sizes)], regions,
                             pooled)

    @staticmethod
    def concat(parts: list[EncodedImages]) -> EncodedImages:
        """Several encodings (e.g. single images from the cache) as one batch."""
        if len(parts) == 1:
            return parts[0]
        fields = [[x for p in parts for x in getattr(p, f.name)] if getattr(parts[0], f.name) is not None else None
                  for f in dataclasses.fields(EncodedImages)]
        return EncodedImages(*fields)

    def with_box_features(self, box_features: list[torch.Tensor]) -> EncodedImages:
        """The same images seen through another box head (the frozen parts re-used)."""
        return dataclasses.replace(self, box_features=box_features)


class OpenVocabDetector(GeneralizedRCNN):
    def __init__(self, config: DetectorConfig):
        cfg = config
        if cfg.box_head_fcs < 1:
            raise ValueError("box_head_fcs must be at least 1")
        spec = build_backbone(cfg)
        backbone = spec.module
        c = backbone.out_channels
        anchor_gen = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes),
                                     ((0.5, 1.0, 2.0),) * len(cfg.anchor_sizes))
        rpn = ScoredRPN(
            anchor_gen,
            RPNHead(c, anchor_gen.num_anchors_per_location()[0], conv_depth=cfg.rpn_head_convs),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3,
            batch_size_per_image=cfg.rpn_batch_size_per_image, positive_fraction=0.5,
            pre_nms_top_n={"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_pre_nms_top_n_test},
            post_nms_top_n={"training": cfg.rpn_post_nms_top_n_train, "testing": cfg.rpn_post_nms_top_n_test},
            nms_thresh=cfg.rpn_nms_thresh,
        )
        box_head = FastRCNNConvFCHead(
            (c, 7, 7), [c] * cfg.box_head_convs, [cfg.representation_size] * cfg.box_head_fcs,
            norm_layer=_norm_layer(cfg.head_norm),
        )
        predictor = ZeroShotBoxPredictor(cfg.representation_size, cfg.embed_dim, cfg.temperature,
                                         cfg.cls_prior_prob)
        roi_heads = ZeroShotRoIHeads(
            MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2), box_head, predictor,
            0.5, 0.5, cfg.roi_batch_size_per_image, 0.25, None,
            cfg.score_threshold, cfg.nms_threshold, cfg.max_detections,
            federated_threshold=cfg.federated_threshold, federated_num=cfg.federated_num_classes,
        )
        transform = DetectorTransform(cfg.min_size, cfg.max_size, spec.image_mean, spec.image_std)
        super().__init__(backbone, rpn, roi_heads, transform)
        # Built with weights, the config records whether they were pre-trained; built without
        # ("none": a checkpoint's weights come next, see `load_checkpoint`), it keeps what it says.
        self.config = cfg.replace(backbone_pretrained=spec.pretrained) if cfg.backbone_weights != "none" \
            or cfg.backbone_pretrained is None else cfg
        self.class_names: list[str] = []
        self.dropped_keys: list[str] = []  # pre-training-only tensors a checkpoint load left out
        self.register_buffer("class_embeddings", torch.zeros(0, cfg.embed_dim), persistent=False)
        self.name_adapters = NameAdapters(cfg.embed_dim)  # what tags taught the region scorer (empty: nothing)

    # --- vocabulary --------------------------------------------------------------------------
    def set_vocabulary(self, names: list[str], embeddings: torch.Tensor) -> None:
        """Swap the classifier's fixed text embeddings; no other weight changes."""
        if embeddings.shape != (len(names), self.config.embed_dim):
            raise ValueError(f"expected embeddings of shape {(len(names), self.config.embed_dim)}")
        self.class_names = list(names)
        self.class_embeddings = embeddings.to(self.class_embeddings.device, torch.float32)

    def _embeddings(self, class_embeddings: torch.Tensor | None) -> torch.Tensor:
        emb = self.class_embeddings if class_embeddings is None else class_embeddings
        if emb.numel() == 0:
            raise ValueError("no vocabulary: pass class_embeddings or call set_vocabulary() first")
        return emb.to(self.class_embeddings.device)

    @property
    def backbone_pretrained(self) -> bool | None:
        """Whether the backbone started from pre-trained weights (`DetectorConfig.backbone_pretrained`,
        so checkpoints keep it); None when a checkpoint from before the field does not say."""
        return self.config.backbone_pretrained

    @backbone_pretrained.setter
    def backbone_pretrained(self, value: bool | None) -> None:
        self.config = self.config.replace(backbone_pretrained=value)

    def parameter_counts(self) -> dict[str, int]:
        return count_parameters(self)

    # --- box-labelled training and plain inference --------------------------------------------
    def forward(self, images, targets=None, class_embeddings=None):
        emb = self._embeddings(class_embeddings)
        if not self.training:  # one inference path, shared with the Predictor
            return self.classify(self.encode(images), emb)
        if targets is None:
            raise ValueError("training forward needs targets (boxes + 0-based labels)")
        targets = [{"boxes": t["boxes"], "labels": t["labels"].long() + 1} for t in targets]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, _, rpn_losses = self.rpn(image_list, features, targets)
        _, roi_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets, class_embeddings=emb)
        return {**rpn_losses, **roi_losses}

    # --- proposals: the RPN once trained, selective search before ----------------------------
    @property
    def uses_selective_search(self) -> bool:
        return not self.config.rpn_trained

    def propose(self, images, image_list, features) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(proposals in network-input coordinates, objectness) per image.

        While `config.rpn_trained` is False the RPN's weights are random, so proposals come from
        selective search on the images as given (`detector.proposals`), with objectness 1."""
        if not self.uses_selective_search:
            proposals, objectness, _ = self.rpn(image_list, features, compute_losses=False)
            return proposals, objectness
        from .proposals import DETECTION, selective_search

        proposals, objectness = [], []
        device = image_list.tensors.device
        for img, size in zip(images, image_list.image_sizes):  # a [3, H, W] tensor or an H x W x 3 array
            orig = tuple(img.shape[-2:]) if isinstance(img, torch.Tensor) else tuple(img.shape[:2])
            boxes = selective_search(img, DETECTION)
            if len(boxes) == 0:  # e.g. a blank image: the whole image is the only region
                boxes = torch.tensor([[0.0, 0.0, float(orig[1]), float(orig[0])]])
            proposals.append(resize_boxes(boxes.to(device), orig, size))
            objectness.append(torch.ones(len(boxes), device=device))
        return proposals, objectness

    # --- inference split at the vocabulary ----------------------------------------------------
    def ensemble_weights(self) -> tuple[float, float]:
        """F-VLM's region-scorer weight w for (names the head was trained on, other names).

        While proposals come from selective search, trained names are scored by the region scorer
        alone (w = 1; what tags taught such a model lives in its name adapters): a box head that
        never saw a box cannot localise, and image-level tags cannot show where its scores put
        boxes. Measured: seed 2 of `bench/loop_real.py` lost 5.8 base box AP50 at w = 0.5 while its
        held-out image-level AP rose; with the configured 0.35, 10 tags on four scikit-image photos
        took "helmet" on the astronaut from 0.78 to 0.00 and "espresso" on the coffee from 0.70 to
        0.00. Held-out scoring (`train.finetune`) therefore only tries w = 1 for such a model, and
        every checkpoint of it, not only `best/`, is served that way."""
        cfg = self.config
        trained = 1.0 if self.uses_selective_search else cfg.ensemble_weight_trained
        return trained, cfg.ensemble_weight_untrained

    @property
    def head_contributes(self) -> bool:
        """False while no score or box can depend on the backbone, neck and box head: proposals
        from selective search (boxes not refined), and every name scored by the region scorer
        alone (F-VLM weight w = 1 for trained and untrained names)."""
        return not (self.config.region_scoring and self.uses_selective_search
                    and min(self.ensemble_weights()) >= 1.0)

    @torch.no_grad()
    def encode(self, images: list[torch.Tensor], keep_pooled: bool = False) -> EncodedImages:
        """`keep_pooled`: also keep the RoI-aligned neck features, so that another box head (a
        later checkpoint of a run that trains only the heads) can be scored without redoing the
        backbone, the neck and the proposals."""
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, _ = self.transform(images)
        return self.encode_images(image_list, original_sizes, images, keep_pooled)

    @torch.no_grad()
    def encode_images(self, image_list: ImageList, original_sizes: list[tuple[int, int]], sources,
                      keep_pooled: bool = False, heads: bool = True) -> EncodedImages:
        """`encode` from a batch already normalised, resized and padded (`DetectorTransform`);
        `sources`: the images as given (selective search reads them; unused with the RPN).
        `heads=False` (only when `head_contributes` is False): no backbone, neck or box head, zero
        box features: the offline model before training then costs selective search and the region
        scorer only."""
        if not heads:
            proposals, objectness = self.propose(sources, image_list, None)
            zeros = [p.new_zeros(len(p), self.config.representation_size) for p in proposals]
            return EncodedImages(proposals, objectness, zeros, [p.clone() for p in proposals],
                                 list(image_list.image_sizes), original_sizes)
        features = self.backbone(image_list.tensors)
        proposals, objectness = self.propose(sources, image_list, features)
        pooled = self.roi_heads.box_roi_pool(features, proposals, image_list.image_sizes)
        x = self.roi_heads.box_head(pooled)
        if self.uses_selective_search:  # box regression is as untrained as the RPN: keep the boxes
            boxes = [p.clone() for p in proposals]
        else:
            deltas = self.roi_heads.box_predictor.bbox_pred(x.flatten(1))
            boxes = self.roi_heads.decode_boxes(deltas, proposals, image_list.image_sizes)
        counts = [len(p) for p in proposals]
        return EncodedImages(proposals, objectness, list(x.split(counts)), boxes,
                             list(image_list.image_sizes), original_sizes,
                             pooled=list(pooled.split(counts)) if keep_pooled else None)

    @torch.no_grad()
    def classify(self, enc: EncodedImages, class_embeddings=None, score_threshold=None,
                 nms_threshold=None, max_detections=None, region_scorer=None,
                 clip_weights: torch.Tensor | None = None, names: list[str] | None = None) -> list[dict[str, torch.Tensor]]:
        """Detections (original image coordinates) for `enc` under a vocabulary.

        With region features in `enc` and the `region_scorer` that made them (CLIP or ImageNet,
        see `detector.region_scorer`), class probabilities are F-VLM's ensemble
        p_head^(1-w) * p_region^w with per-class weights `clip_weights` (w). `names`: the
        vocabulary as typed (the ImageNet scorer maps them through WordNet).
        """
        emb = self._embeddings(class_embeddings)
        cfg = self.config
        out = []
        for i in range(len(enc.boxes)):
            scores = self.class_scores(enc, i, emb, region_scorer, clip_weights, names)
            det = select_detections(
                enc.boxes[i], scores,
                cfg.score_threshold if score_threshold is None else score_threshold,
                cfg.nms_threshold if nms_threshold is None else nms_threshold,
                cfg.max_detections if max_detections is None else max_detections,
                part_ratio=cfg.part_suppression,
            )
            det["boxes"] = resize_boxes(det["boxes"], enc.image_sizes[i], enc.original_sizes[i])
            out.append(det)
        return out

    @torch.no_grad()
    def class_scores(self, enc: EncodedImages, i: int, class_embeddings: torch.Tensor, region_scorer=None,
                     clip_weights: torch.Tensor | None = None, names: list[str] | None = None) -> torch.Tensor:
        """[N, C] final per-box, per-name scores of image `i` of `enc` (what `classify` thresholds):
        the head's sigmoid, F-VLM's ensemble with the region scorer, and Detic's objectness product."""
        return self.batch_scores(enc.select(i), class_embeddings, region_scorer, clip_weights, names)

    @torch.no_grad()
    def batch_scores(self, enc: EncodedImages, class_embeddings: torch.Tensor, region_scorer=None,
                     clip_weights: torch.Tensor | None = None, names: list[str] | None = None) -> torch.Tensor:
        """`class_scores` of every image of `enc` in one pass: [sum N_i, C], images one after another.
        Region features cover each image's first boxes (highest objectness); the rest get p_region 0."""
        from .region_scorer import ensemble

        feats = enc.box_features[0] if len(enc.boxes) == 1 else torch.cat(enc.box_features)
        logits = self.roi_heads.box_predictor.cls_score(feats.float(), class_embeddings)
        scores = torch.sigmoid(logits[:, :-1].float())
        regions = enc.region_embeddings
        if regions is not None and region_scorer is not None and clip_weights is not None:
            if any(r is None for r in regions):  # not seen in practice: image by image
                return torch.cat([self.batch_scores(enc.select(i), class_embeddings, region_scorer, clip_weights,
                                                    names)
                                  for i in range(len(enc.boxes))])
            counts, ks = [len(b) for b in enc.boxes], [len(r) for r in regions]
            probs = region_scorer.probabilities(
                regions[0] if len(ks) == 1 else torch.cat(regions), class_embeddings,
                adapters=self.name_adapters.offsets(class_embeddings), names=names).to(scores.device, scores.dtype)
            if ks == counts:
                p_clip = probs
            else:
                starts = np.cumsum([0] + counts[:-1])
                rows = np.concatenate([s + np.arange(k) for s, k in zip(starts, ks)])
                p_clip = scores.new_zeros(scores.shape)
                p_clip[torch.from_numpy(rows).to(scores.device)] = probs
            scores = ensemble(scores, p_clip, clip_weights)
        if self.config.mult_proposal_score and not self.uses_selective_search:  # objectness means something
            obj = enc.objectness[0] if len(enc.boxes) == 1 else torch.cat(enc.objectness)
            scores = torch.sqrt(scores * obj.float()[:, None])
        return scores

    @torch.no_grad()
    def detect_batch(self, enc: EncodedImages, class_embeddings=None, score_threshold=None, nms_threshold=None,
                     max_detections=None, region_scorer=None, clip_weights: torch.Tensor | None = None,
                     names: list[str] | None = None) -> list[dict[str, np.ndarray]]:
        """`classify` for the whole batch at once (scores, ensemble, thresholds and NMS over image x
        class groups), ending in one device-to-host copy: per image {"boxes" [K, 4] in original
        pixels, "scores" [K], "labels" [K]} as numpy arrays, best first."""
        cfg = self.config
        scores = self.batch_scores(enc, self._embeddings(class_embeddings), region_scorer, clip_weights, names)
        counts = [len(b) for b in enc.boxes]
        boxes = enc.boxes[0] if len(counts) == 1 else torch.cat(enc.boxes)
        image_ids = torch.from_numpy(np.repeat(np.arange(len(counts)), counts)).to(boxes.device)
        det = select_detections_batched(
            boxes, scores, image_ids, len(counts),
            cfg.score_threshold if score_threshold is None else score_threshold,
            cfg.nms_threshold if nms_threshold is None else nms_threshold, part_ratio=cfg.part_suppression)
        host = torch.cat([det["boxes"].float(), det["scores"][:, None].float(), det["labels"][:, None].float(),
                          det["images"][:, None].float()], dim=1).cpu().numpy()  # the one copy to the host
        limit = cfg.max_detections if max_detections is None else max_detections
        out = []
        for i, (size, orig) in enumerate(zip(enc.image_sizes, enc.original_sizes)):
            rows = host[host[:, 6] == i][:limit]  # best first within the image, as NMS sorted them
            # torchvision's resize_boxes ratios, in float32 as it computes them
            rw, rh = np.float32(orig[1]) / np.float32(size[1]), np.float32(orig[0]) / np.float32(size[0])
            out.append({"boxes": rows[:, :4] * np.array([rw, rh, rw, rh], np.float32), "scores": rows[:, 4],
                        "labels": rows[:, 5].astype(np.int64)})
        return out

    # --- image-labelled training (Detic) -------------------------------------------------------
    def _label_proposals(self, images, num_proposals):
        image_list, _ = self.transform(images)
        features = self.backbone(image_list.tensors)
        proposals, objectness = self.propose(images, image_list, features)
        proposals = [with_image_box(p[:num_proposals], s) for p, s in zip(proposals, image_list.image_sizes)]
        x = self.roi_heads.box_features(features, proposals, image_list.image_sizes)
        return image_list, proposals, objectness, x

    def image_label_loss(self, images, labels: list[list[int]], class_embeddings=None, *,
                         rule: str = DEFAULT_RULE, weight: float = DEFAULT_WEIGHT, scope: str = DEFAULT_SCOPE,
                         negatives: list[list[int]] | None = None,
                         num_proposals: int | None = None) -> dict[str, torch.Tensor]:
        """Detic's loss for images with image-level labels only: `{"loss_image_label": weight·L}`.

        `rule`: one of `IMAGE_LABEL_RULES`; `weight`: Detic's λ; `scope="box_head"` (default, as
        in Detic) lets the gradient of the chosen proposals' logits into the box head and neck;
        "classifier" computes proposals and RoI features without gradients (and without
        normalisation-statistics updates), so only the zero-shot classifier learns. Never an RPN
        or box-regression loss. Detic's diagnostics of the choices are left in
        `self.image_label_stats` (plain floats).
        """
        check_rule(rule)
        check_scope(scope)
        emb = self._embeddings(class_embeddings)
        k = num_proposals or self.config.image_label_num_proposals
        if scope == "box_head":
            image_list, proposals, _, x = self._label_proposals(images, k)
        else:  # frozen for this batch: no gradients and no normalisation-statistics updates
            with torch.no_grad(), eval_mode(self.backbone, self.rpn, self.roi_heads.box_head):
                image_list, proposals, _, x = self._label_proposals(images, k)
        logits = self.roi_heads.box_predictor.cls_score(x.flatten(1), emb)[:, :-1]
        per_image = list(logits.split([len(p) for p in proposals]))
        choices = [choose_proposals(rule, p, lg.detach(), lb) for p, lg, lb in zip(proposals, per_image, labels)]
        neg = [negative_terms(lg.detach(), n) for lg, n in zip(per_image, negatives or [[] for _ in labels])]
        self.image_label_stats = choice_stats(proposals, [lg.detach() for lg in per_image], choices,
                                              list(image_list.image_sizes))
        return {"loss_image_label": weight * image_label_loss(per_image, choices, neg)}

    @torch.no_grad()
    def assign(self, images, labels: list[list[int]], class_embeddings=None, num_proposals=None,
               rules=IMAGE_LABEL_RULES, at_training_scale: bool = False) -> list[dict]:
        """What each rule would train: proposals (original coords, image box last), objectness,
        per-class scores and, per rule, the `Choice`s made for the labels.

        `at_training_scale`: the images are already resized as training resizes tag images, so
        they are not resized to `min_size` (the candidates are then exactly training's)."""
        emb = self._embeddings(class_embeddings)
        k = num_proposals or self.config.image_label_num_proposals
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        mode = self.transform.training
        self.transform.train(at_training_scale or mode)
        try:
            image_list, proposals, objectness, x = self._label_proposals(images, k)
        finally:
            self.transform.train(mode)
        logits = self.roi_heads.box_predictor.cls_score(x.flatten(1), emb)[:, :-1]
        out = []
        for p, obj, lg, lb, size, orig in zip(proposals, objectness, logits.split([len(p) for p in proposals]),
                                                labels, image_list.image_sizes, original_sizes):
            choices: dict[str, list[Choice]] = {r: choose_proposals(r, p, lg, lb) for r in rules}
            out.append({
                "proposals": resize_boxes(p, size, orig),
                "objectness": torch.cat([obj[: len(p) - 1], obj.new_ones(1)]),
                "scores": torch.sigmoid(lg.float()),
                "choices": choices,
            })
        return out

