"""torchvision's RPN, also returning the objectness of each kept proposal.

The stock `RegionProposalNetwork.forward` drops the scores that `filter_proposals` computes; the
assignment view (top proposals, max-object-score rule) and Detic's optional
`sqrt(class score * objectness)` need them.
"""

from __future__ import annotations

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers


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
