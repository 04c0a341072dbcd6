"""Issue 23: `coco-clip` localises exactly as torchvision's `fasterrcnn_resnet50_fpn_v2`.

One set of random torchvision v2 weights (batch-norm statistics and affine terms randomised too,
so FrozenBatchNorm vs BatchNorm is really tested) goes into both models, ours through
`coco_weights.map_frcnn_state`, as COCO's weights do on a machine that can download them. On the
same image:
- the RPN proposals are torchvision's (same boxes, same order, within 1e-4 px) and so are their
  objectness scores;
- the box head's features on those proposals are torchvision's (within 1e-4 relative);
- the refined boxes differ by design: torchvision regresses one box per class, ours one box per
  proposal, with the mean of the foreground classes' regressors (`coco_weights`). Ours equal the
  boxes decoded from the mean of torchvision's foreground deltas (within 1e-3 px: the mean of
  the weights vs the mean of the outputs, summed in another order).
The classifier differs entirely (zero-shot vs COCO's 91-way softmax) and is not compared.
"""

import pytest
import torch
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_V2_Weights, fasterrcnn_resnet50_fpn_v2

from detector import OpenVocabDetector
from detector.coco_weights import foreground_indices, map_frcnn_state
from detector.presets import PRESETS

SIZE = dict(min_size=224, max_size=256)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    theirs = fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91,
                                        rpn_post_nms_top_n_test=300, **SIZE).eval()
    g = torch.Generator().manual_seed(1)
    for m in theirs.modules():  # random statistics: FrozenBatchNorm must reproduce BatchNorm's eval
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    cfg = PRESETS["coco-clip"].replace(init_weights="", backbone_weights="none", rpn_trained=True, **SIZE)
    ours = OpenVocabDetector(cfg).eval()
    categories = list(FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1.meta["categories"])
    mapped, report = map_frcnn_state(ours.state_dict(), theirs.state_dict(), categories)
    ours.load_state_dict(mapped, strict=False)
    return ours, theirs, categories


@pytest.fixture(scope="module")
def runs(pair, small_image):
    ours, theirs, _ = pair
    image = torch.from_numpy(small_image).permute(2, 0, 1).float().div(255)
    with torch.inference_mode():
        enc = ours.encode([image])
        image_list, _ = theirs.transform([image])
        features = theirs.backbone(image_list.tensors)
        proposals, _ = theirs.rpn(image_list, features)
        pooled = theirs.roi_heads.box_roi_pool(features, proposals, image_list.image_sizes)
        x = theirs.roi_heads.box_head(pooled)
        _, deltas = theirs.roi_heads.box_predictor(x)
    return enc, image_list, proposals, x, deltas


def test_the_same_rpn_proposals_as_torchvision(runs):
    enc, image_list, proposals, _, _ = runs
    assert enc.image_sizes == list(image_list.image_sizes)
    assert enc.proposals[0].shape == proposals[0].shape and len(proposals[0]) > 50
    torch.testing.assert_close(enc.proposals[0], proposals[0], atol=1e-4, rtol=0)


def test_the_same_box_head_features_as_torchvision(runs):
    enc, _, _, x, _ = runs
    torch.testing.assert_close(enc.box_features[0], x, atol=1e-4 * x.abs().max().item(), rtol=1e-4)


def test_refined_boxes_are_torchvisions_with_the_mean_foreground_regressor(pair, runs):
    _, theirs, categories = pair
    enc, image_list, proposals, _, deltas = runs
    fg = foreground_indices(categories)
    mean_deltas = deltas.view(len(deltas), len(categories), 4)[:, fg].mean(1)
    boxes = theirs.roi_heads.box_coder.decode(mean_deltas, proposals).reshape(-1, 4)
    h, w = image_list.image_sizes[0]
    boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                         boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
    torch.testing.assert_close(enc.boxes[0], boxes, atol=1e-3, rtol=0)
    # and the documented difference: torchvision's per-class boxes are not one box per proposal
    per_class = theirs.roi_heads.box_coder.decode(deltas, proposals).reshape(len(deltas), -1, 4)[:, fg]
    assert (per_class - per_class.mean(1, keepdim=True)).abs().max() > 0
