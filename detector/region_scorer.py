"""Region scores: how well each proposal's crop matches each name, before any training.

One interface (`RegionScorer`), two implementations:
- `ClipRegionScorer`: crops through the open_clip image tower; a crop's score for a name is a
  softmax over the vocabulary plus a "background" prompt (needs a CLIP text encoder).
- `detector.imagenet_scorer.ImageNetRegionScorer`: crops through the packaged ImageNet
  EfficientNet-Lite0 with its 1000-class head; ImageNet classes are mapped onto the names through
  text-embedding similarity (works fully offline, with MiniLM names).

Both split the work at the vocabulary: `embed_regions` (per image, cached with the rest of the
image's encoding) and `probabilities` (per vocabulary, one matrix product). The detector's
`classify` ensembles the result with the zero-shot head (F-VLM), whichever scorer made it.

Crops are taken with context around each box (`context` x the box size, as the classifiers saw
whole objects in context) and resized to the network's input size in one batched `roi_align`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from .text_encoders import ClipEncoder


class RegionScorer(Protocol):
    """What the predictor and `OpenVocabDetector.classify` need from a region scorer."""

    kind: str
    capabilities: str  # one line for people: what this scorer can and cannot recognise

    def embed_regions(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """`image` [3, H, W] in [0, 1], `boxes` [N, 4] in its pixels -> vocabulary-free [N, F]."""
        ...

    def probabilities(self, regions: torch.Tensor, class_embeddings: torch.Tensor,
                      adapters: torch.Tensor | None = None, names: list[str] | None = None) -> torch.Tensor:
        """[N, F] region features x [C, D] name embeddings -> [N, C] probabilities in [0, 1]
        (`adapters`: per-name corrections learned from tags, where the scorer has them; `names`:
        the C names as typed, for a scorer that reads them beyond their embedding)."""
        ...


def expand_boxes(boxes: torch.Tensor, context: float, height: int, width: int) -> torch.Tensor:
    """Grow each box about its centre by `context`, clipped to the image."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1) * context
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1) * context
    out = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    return torch.stack([out[:, 0].clamp(0, width), out[:, 1].clamp(0, height),
                        out[:, 2].clamp(0, width), out[:, 3].clamp(0, height)], dim=1)


def expand_boxes_within(boxes: torch.Tensor, context: float, sizes: torch.Tensor) -> torch.Tensor:
    """`expand_boxes` with one image size per box (`sizes` [N, 2] = width, height), no host sync."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1) * context
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1) * context
    out = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    return torch.minimum(out.clamp(min=0), sizes.repeat(1, 2))


class ClipRegionScorer:
    kind = "clip"
    capabilities = "CLIP region scores: most everyday objects and people, by name."

    def __init__(self, clip: ClipEncoder, context: float = 1.5, batch_size: int = 1024,
                 background: torch.Tensor | None = None):
        self.clip = clip
        self.context = context
        self.batch_size = batch_size
        self.background = background if background is not None else clip.encode(["a background"])[0]

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

    @torch.inference_mode()
    def embed_regions_batch(self, groups: list[tuple[list[int], torch.Tensor]], boxes: torch.Tensor,
                            counts: list[int]) -> torch.Tensor:
        """`embed_regions` for the boxes of a whole batch at once: `groups` are the images as uint8
        [G, H, W, 3] on the device (image indices, tensor), `boxes` [sum(counts), 4] in each image's
        pixels, `counts[i]` boxes of image i in order. One roi_align and one pass of the image tower
        per `batch_size` crops (default 1,024: all of a batch of 8 at region_top_k = 100)."""
        if sum(counts) == 0:
            return boxes.new_zeros(0, self.clip.dim)
        device = next(self.clip.model.parameters()).device
        sizes = [None] * len(counts)
        for idx, t in groups:
            for i in idx:
                sizes[i] = t.shape[1:3]
        if len(groups) == 1:
            images = groups[0][1].permute(0, 3, 1, 2).float().div_(255)
        else:  # images of several shapes: zero-padded to the largest (crops stay inside their image)
            images = groups[0][1].new_zeros(len(counts), 3, max(s[0] for s in sizes), max(s[1] for s in sizes),
                                            dtype=torch.float32)
            for idx, t in groups:
                images[idx, :, : t.shape[1], : t.shape[2]] = t.permute(0, 3, 1, 2).float().div_(255)
        per_box = np.repeat(np.array([[i, s[1], s[0]] for i, s in enumerate(sizes)], np.float32), counts, axis=0)
        per_box = torch.from_numpy(per_box).to(device)
        crops_boxes = expand_boxes_within(boxes.float().to(device), self.context, per_box[:, 1:])
        rois = torch.cat([per_box[:, :1], crops_boxes], dim=1)
        out = []
        for i in range(0, len(rois), self.batch_size):
            crops = roi_align(images.to(device), rois[i : i + self.batch_size], output_size=self.clip.image_size,
                              spatial_scale=1.0, sampling_ratio=2, aligned=True)
            out.append(self.clip.encode_images(crops))
        return out[0] if len(out) == 1 else torch.cat(out)

    def probabilities(self, regions: torch.Tensor, class_embeddings: torch.Tensor,
                      adapters: torch.Tensor | None = None, names: list[str] | None = None) -> torch.Tensor:
        """`adapters` (learned ImageNet-class corrections) have no meaning for CLIP, and CLIP reads
        names through their embeddings alone: both ignored."""
        return region_probabilities(regions, class_embeddings, self.background)


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


def build_region_scorer(cfg, encoder, device: torch.device | str = "cpu") -> RegionScorer:
    """The scorer `cfg.region_scorer` names ("clip" or "imagenet"), on `device`.

    `encoder` is the text encoder of the classifier's vocabulary embeddings: the scorer's
    `probabilities` receive those embeddings, so it must live in the same space."""
    device = torch.device(device)
    if cfg.region_scorer == "clip":
        if not isinstance(encoder, ClipEncoder):
            raise ValueError("the 'clip' region scorer needs a CLIP text encoder ('clip' or 'tiny_clip')")
        encoder.model.to(device)
        encoder.device = str(device)
        background = encoder.encode([cfg.prompt.format("background")])[0].to(device)
        return ClipRegionScorer(encoder, cfg.region_context, background=background)
    if cfg.region_scorer == "imagenet":
        from .imagenet_scorer import ImageNetRegionScorer

        return ImageNetRegionScorer(encoder, cfg.region_context, device=device, min_size=cfg.min_size,
                                    max_size=cfg.max_size)
    raise ValueError(f"unknown region_scorer {cfg.region_scorer!r}; choose 'clip' or 'imagenet'")
