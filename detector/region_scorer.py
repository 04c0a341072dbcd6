"""CLIP region scores: how well each proposal's crop matches each name, before any training.

Crops are taken with context around each box (`context` x the box size, as CLIP saw whole
objects in context) and resized to CLIP's input size in one batched `roi_align`, then embedded
by the open_clip image tower. The embeddings do not depend on the vocabulary, so they are cached
with the rest of an image's encoding; scoring a new vocabulary is one matrix product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from .text_encoders import ClipEncoder


def expand_boxes(boxes: torch.Tensor, context: float, height: int, width: int) -> torch.Tensor:
    """Grow each box about its centre by `context`, clipped to the image."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1) * context
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1) * context
    out = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    return torch.stack([out[:, 0].clamp(0, width), out[:, 1].clamp(0, height),
                        out[:, 2].clamp(0, width), out[:, 3].clamp(0, height)], dim=1)


class RegionScorer:
    def __init__(self, clip: ClipEncoder, context: float = 1.5, batch_size: int = 64):
        self.clip = clip
        self.context = context
        self.batch_size = batch_size

    @torch.inference_mode()
    def embed_regions(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """`image`: [3, H, W] in [0, 1]; `boxes`: [N, 4] in its pixels -> [N, D] normalised."""
        if len(boxes) == 0:
            return image.new_zeros(0, self.clip.dim)
        h, w = image.shape[-2:]
        crops_boxes = expand_boxes(boxes.float(), self.context, h, w)
        device = next(self.clip.model.parameters()).device
        image = image.float().to(device)
        out = []
        for i in range(0, len(crops_boxes), self.batch_size):
            chunk = crops_boxes[i : i + self.batch_size].to(device)
            crops = roi_align(image[None], [chunk], output_size=self.clip.image_size, spatial_scale=1.0,
                              sampling_ratio=2, aligned=True)
            out.append(self.clip.encode_images(crops))
        return torch.cat(out)


def region_probabilities(region_embeddings: torch.Tensor, class_embeddings: torch.Tensor,
                         background: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
    """Softmax over the vocabulary plus a background prompt, background dropped: [N, C].

    The background column is what lets a crop of nothing score low for every name."""
    texts = F.normalize(torch.cat([class_embeddings, background.reshape(1, -1)]).float(), dim=-1)
    probs = (logit_scale * region_embeddings.float() @ texts.to(region_embeddings.device).t()).softmax(-1)
    return probs[:, :-1]


def ensemble(p_head: torch.Tensor, p_clip: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """F-VLM's geometric mean per class: p_head^(1 - w) * p_clip^w, with `weights` [C]."""
    w = weights.to(p_head.device, p_head.dtype)
    eps = torch.finfo(p_head.dtype).tiny
    return p_head.clamp(min=eps).pow(1 - w) * p_clip.to(p_head.dtype).clamp(min=eps).pow(w)


def class_weights(names: list[str], trained: list[str], w_trained: float, w_untrained: float) -> torch.Tensor:
    """Per-name CLIP weight: names the head was trained on trust it more. Untrained head: 1."""
    if not trained:
        return torch.ones(len(names))
    known = {n.casefold() for n in trained}
    return torch.tensor([w_trained if n.casefold() in known else w_untrained for n in names])
