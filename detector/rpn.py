"""torchvision's RPN, also returning the objectness of each kept proposal.

The stock `RegionProposalNetwork.forward` drops the scores that `filter_proposals` computes; the
assignment view (top proposals, max-object-score rule) and Detic's optional
`sqrt(class score * objectness)` need them. Its `filter_proposals` is torchvision's for the whole
batch at once (same boxes in the same order; see `ScoredRPN.filter_proposals`).
"""

from __future__ import annotations

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import nms


class ScoredRPN(RegionProposalNetwork):
    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
        compute_losses: bool | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor]]:
        """Returns (boxes per image, objectness per image, losses). Losses only when
        `compute_losses` (default: in training mode); image-labelled batches pass False."""
        compute_losses = self.training if compute_losses is None else compute_losses
        feats = list(features.values())
        objectness, pred_bbox_deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, scores = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)

        losses: dict[str, torch.Tensor] = {}
        if compute_losses:
            if targets is None:
                raise ValueError("RPN losses need box targets")
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_objectness, loss_rpn_box_reg = self.compute_loss(
                objectness, pred_bbox_deltas, labels, regression_targets
            )
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        return boxes, scores, losses

    def filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
        """torchvision's `filter_proposals`, same boxes in the same order, with the per-image work
        batched: clipping, the small-box and score rules as one mask over the batch (one host
        sync, plus one for the per-image counts), and per image one NMS call over all its levels
        (levels shifted apart in float64, as exact as torchvision's loop over levels)."""
        if torch.jit.is_tracing():  # ONNX export: sizes must stay symbolic, torchvision's loop does that
            return super().filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level)
        num_images, device = proposals.shape[0], proposals.device
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=device)
                            for i, n in enumerate(num_anchors_per_level)])[None].expand_as(objectness)
        top_n_idx = self._get_top_n_idx(objectness, num_anchors_per_level)
        batch_idx = torch.arange(num_images, device=device)[:, None]
        prob = torch.sigmoid(objectness[batch_idx, top_n_idx])
        levels, proposals = levels[batch_idx, top_n_idx], proposals[batch_idx, top_n_idx]
        limits = torch.tensor([[w, h, w, h] for h, w in image_shapes], dtype=proposals.dtype)
        boxes = torch.minimum(proposals.clamp(min=0), limits.to(device)[:, None])  # clip_boxes_to_image
        wh = boxes[..., 2:] - boxes[..., :2]
        valid = (wh >= self.min_size).all(-1) & (prob >= self.score_thresh)  # remove_small_boxes, score_thresh
        counts = valid.sum(1).tolist()  # a host sync (not an aten sync op: the profiler shows none)
        flat = valid.reshape(-1).nonzero().squeeze(1)  # one nonzero for the three tensors
        boxes, prob, levels = boxes.reshape(-1, 4)[flat], prob.reshape(-1)[flat], levels.reshape(-1)[flat]
        shifted = boxes.double() + (levels.double() * (boxes.max().double() + 1 if len(boxes) else 1))[:, None]
        final_boxes, final_scores = [], []
        for b, p, sb in zip(boxes.split(counts), prob.split(counts), shifted.split(counts)):
            keep = nms(sb, p.double(), self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(b[keep])
            final_scores.append(p[keep])
        return final_boxes, final_scores
