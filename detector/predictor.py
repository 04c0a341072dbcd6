"""`Predictor`: images + a typed vocabulary -> `supervision.Detections`. The Python API.

The expensive, vocabulary-independent work (backbone, proposals, RoI features, class-agnostic
box refinement) is cached per image content, so changing only the vocabulary or a threshold
re-runs just the classifier. On CUDA the model runs channels_last under bf16 autocast.
Images may be given as anything `load_image` reads, including a `LoadedImage` (not decoded again);
boxes always come back in the original image's pixels.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import supervision as sv
import torch

from .capacity import backbone_choice_of, head_preset_of
from .checkpoint import save_checkpoint
from .embedding_cache import VocabularyEmbedder
from .images import LoadedImage, load_image, resize_shorter
from .model import EncodedImages, OpenVocabDetector
from .presets import load_detector
from .vocabulary import parse_vocabulary

# Where an untrained RPN's boxes come from, and what changes that: tags teach names, not boxes (a
# model trained on tags alone still said "selective search until the detector is trained").
SELECTIVE_SEARCH_NOTE = ("selective search (RPN not trained yet: box labels or pre-training on your images train "
                         "it; tags teach names, not boxes)")
ENSEMBLE_NOTE = ("w = 1 (region scores only) until the head is trained, and for every name while proposals come "
                 "from selective search")
MAX_ASPECT = 8  # thinner images are padded to this aspect ratio before the model sees them


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or CUDA when there is one; a device this machine lacks is one clear ValueError
    before any weights load (not a driver traceback from the first tensor moved there)."""
    if device is None or device == "":
        return torch.device(default_device())
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(device)!r}: use cpu or cuda") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r}: no CUDA GPU is available on this machine (use cpu)")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {str(device)!r}: this machine has {count} CUDA GPU(s)")
    return resolved


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, a no-op context on CPU: the one mixed-precision policy (inference and training)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@dataclass
class Assignment:
    """What Detic's image-label rules would train on one image (for display and inspection)."""

    proposals: np.ndarray  # [N + 1, 4] xyxy in image pixels; the last row is the whole image
    objectness: np.ndarray  # [N + 1]
    scores: np.ndarray  # [N + 1, C] per-class probabilities
    labels: list[str]
    rules: dict[str, list[tuple[int, list[str]]]] = field(default_factory=dict)  # rule -> (index, names)


class Predictor:
    def __init__(self, model: OpenVocabDetector, device: str | None = None, cache_size: int = 32):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        cfg = model.config
        self.embedder = VocabularyEmbedder.for_config(cfg)
        if self.embedder.encoder.dim != cfg.embed_dim:
            raise ValueError(f"text encoder '{cfg.text_encoder}' gives {self.embedder.encoder.dim}-d "
                             f"embeddings but the model expects {cfg.embed_dim}")
        self.region_scorer = None
        if cfg.region_scoring:  # CLIP or ImageNet crops (detector.region_scorer)
            from .region_scorer import build_region_scorer

            self.region_scorer = build_region_scorer(cfg, self.embedder.encoder, self.device)
        self._cache: OrderedDict[str, EncodedImages] = OrderedDict()
        self._vocabularies: dict[tuple, object] = {}  # per vocabulary: embeddings, ensemble weights
        self._readings: OrderedDict[tuple, list] = OrderedDict()  # name_readings per vocabulary
        self.cache_size = cache_size
        self._lock = threading.Lock()

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, device: str | None = None) -> Predictor:
        """From a preset name, a local checkpoint folder or a Hub repo id (see `load_detector`)."""
        device = resolve_device(device)  # refused before the weights load
        return cls(load_detector(source, "cpu"), device=device)

    def save_pretrained(self, directory: str | Path, card_info: dict | None = None) -> Path:
        """`config.json` + `model.safetensors` (what loading reads) and a model card, README.md
        (`detector.model_card`; `card_info`: the training data and held-out scores, when known)."""
        from .model_card import write_model_card

        directory = save_checkpoint(self.model, directory)
        write_model_card(directory, self.model.config, card_info)
        return directory

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool = True,
                    card_info: dict | None = None, commit_message: str = "upload detector") -> str:
        """Upload what `save_pretrained` writes to the Hub repo `repo_id` (created, private by
        default, when missing); returns the commit's URL. `token`: None = huggingface_hub's own
        (HF_TOKEN or the stored login). Errors are huggingface_hub's."""
        import shutil
        import tempfile

        from huggingface_hub import HfApi

        from .hub import hub_endpoint

        folder = Path(tempfile.mkdtemp(prefix="ovd-push-"))
        try:
            self.save_pretrained(folder, {**(card_info or {}), "repo_id": repo_id})
            api = HfApi(endpoint=hub_endpoint(), token=token)
            api.create_repo(repo_id, private=bool(private), exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return str(getattr(commit, "commit_url", commit))

    @property
    def config(self):
        return self.model.config

    def at_size(self, min_size: int, max_size: int | None = None) -> Predictor:
        """A predictor that shares this one's weights, text embeddings and region scorer, whose
        model (and ImageNet region scorer) see images at a smaller size: shorter side `min_size`,
        longer side at most `max_size` (default: in the model's own proportion). For quick passes
        over many images (the Tag queue's suggestions); this predictor is left as it is. Boxes
        still come back in the original image's pixels. Its image cache is its own."""
        from .model import DetectorTransform

        cfg = self.model.config
        max_size = int(max_size or round(min_size * cfg.max_size / cfg.min_size))
        if (min_size, max_size) == (cfg.min_size, cfg.max_size):
            return self
        model = copy.copy(self.model)  # shallow: the same parameters, another input transform
        model._modules = type(self.model._modules)(self.model._modules)
        old = self.model.transform
        model.transform = DetectorTransform(min_size, max_size, old.image_mean, old.image_std)
        model.config = cfg.replace(min_size=min_size, max_size=max_size)
        small = copy.copy(self)
        small.model = model
        if hasattr(self.region_scorer, "min_size"):  # the ImageNet scorer reads the image at the model's size
            small.region_scorer = copy.copy(self.region_scorer)
            small.region_scorer.min_size, small.region_scorer.max_size = min_size, max_size
        small._cache, small._lock = OrderedDict(), threading.Lock()
        return small

    def info(self) -> dict:
        cfg = self.model.config
        return {
            "backbone": cfg.backbone,
            "backbone_pretrained": self.model.backbone_pretrained,
            "frozen_backbone": cfg.freeze_backbone,
            "backbone_training": backbone_choice_of(cfg) or f"last {cfg.backbone_trainable_stages} stages",
            "heads": head_preset_of(cfg) or "custom",
            "text_encoder": self.embedder.encoder.key,
            "embed_dim": cfg.embed_dim,
            "parameters": self.model.parameter_counts(),
            "device": str(self.device),
            "trained_class_names": len(cfg.trained_class_names),
            "pretrained_heads": cfg.pretrained_heads or None,
            "region_scoring": cfg.region_scoring,
            "region_scorer": self.region_scorer.kind if self.region_scorer is not None else None,
            "proposals": SELECTIVE_SEARCH_NOTE if self.model.uses_selective_search else "RPN",
            "capabilities": self.region_scorer.capabilities if self.region_scorer is not None else None,
            "ensemble": (dict(zip(("w_trained", "w_untrained"), self.model.ensemble_weights()),
                              note=ENSEMBLE_NOTE) if cfg.region_scoring else None),
        }

    # --- inference -------------------------------------------------------------------------
    def embed(self, vocabulary) -> tuple[list[str], torch.Tensor]:
        """Names and their text embeddings on the device, kept per vocabulary (the last 16): a
        vocabulary seen before costs neither a cache look-up per name nor a copy to the device."""
        names = parse_vocabulary(vocabulary)
        key = (id(self.embedder), tuple(names))
        hit = self._vocabularies.get(key)
        if hit is None:
            names, emb = self.embedder(names)
            hit = (names, emb.to(self.device))
            with self._lock:
                self._vocabularies[key] = hit
                while len(self._vocabularies) > 16:
                    self._vocabularies.pop(next(iter(self._vocabularies)))
        return list(hit[0]), hit[1]

    def _tensor(self, img: LoadedImage) -> torch.Tensor:
        """[3, H, W] in [0, 1]; the model batches images itself (channels_last in the backbone).

        A very thin image (4000 x 8) would shrink to under one feature-map cell, so it is padded
        at the bottom / right to at most MAX_ASPECT : 1; boxes keep their coordinates and are
        clipped to the real image afterwards (`to_detections`)."""
        return torch.from_numpy(padded_array(img.array)).to(self.device).permute(2, 0, 1).float().div_(255)

    def clear_cache(self) -> None:
        """Forget cached image encodings (e.g. before timing the full pipeline)."""
        with self._lock:
            self._cache.clear()

    @staticmethod
    def _key(img: LoadedImage) -> str:
        """A cheap content key: blake2b of the shape and of every s-th byte (s = 1, i.e. every
        byte, up to 1 MiB; ~1 MiB of samples above: ~1 ms for a 12 MP photo instead of ~100 ms).
        Collision safety: a stale hit needs another image of the same shape whose sampled bytes
        are all equal. s is kept coprime with the 3 channels, so every channel is sampled, and
        every edit spanning >= s consecutive bytes (>= s / 3 pixels of a row: under 12 px for
        12 MP) changes a sampled byte; a photo, a re-encoding or a resize changes most of them."""
        flat = np.ascontiguousarray(img.array).reshape(-1)
        step = max(1, flat.size >> 20)
        step += step % 3 == 0
        h = hashlib.blake2b(flat[::step].tobytes(), digest_size=16)
        h.update(f"{img.array.shape}{img.array.dtype}{step}".encode())
        return h.hexdigest()

    def encode(self, images: list[LoadedImage], batch_size: int = 8) -> list[EncodedImages]:
        """Vocabulary-independent features per image, from cache when the same pixels were seen."""
        keys = [self._key(im) for im in images]
        found: dict[int, EncodedImages] = {}
        with self._lock:
            for i, k in enumerate(keys):
                if k in self._cache:
                    self._cache.move_to_end(k)
                    found[i] = self._cache[k]
        missing = [i for i in range(len(images)) if i not in found]
        for start in range(0, len(missing), batch_size):
            idx = missing[start : start + batch_size]
            enc = self._encode_batch([images[i] for i in idx])
            for j, i in enumerate(idx):
                found[i] = enc.select(j)
            with self._lock:
                for i in idx:
                    self._cache[keys[i]] = found[i]
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return [found[i] for i in range(len(images))]

    def _encode_batch(self, images: list[LoadedImage], keep_pooled: bool = False) -> EncodedImages:
        """One batch through the model: uploaded once as uint8, normalised and resized on the device."""
        arrays = [padded_array(im.array) for im in images]
        groups = self._upload(arrays)
        with torch.inference_mode(), autocast_for(self.device):
            image_list = self.model.transform.from_uint8(groups, len(arrays))
            # without backbone and heads when they cannot change any score (`head_contributes`)
            heads = keep_pooled or self.region_scorer is None or self.model.head_contributes
            enc = self.model.encode_images(image_list, [a.shape[:2] for a in arrays], arrays, keep_pooled, heads)
            if self.region_scorer is not None:
                enc.region_embeddings = self._embed_regions(enc, groups)
        return enc

    def _upload(self, arrays: list[np.ndarray]) -> list[tuple[list[int], torch.Tensor]]:
        """Images of equal shape go to the device together as one uint8 [G, H, W, 3] copy (pinned
        and non-blocking on CUDA): (indices, tensor) per shape."""
        by_shape: dict[tuple, list[int]] = {}
        for i, a in enumerate(arrays):
            by_shape.setdefault(a.shape, []).append(i)
        groups = []
        for idx in by_shape.values():
            t = torch.from_numpy(np.stack([arrays[i] for i in idx]) if len(idx) > 1 else arrays[idx[0]][None])
            if self.device.type == "cuda":
                t = t.pin_memory().to(self.device, non_blocking=True)
            groups.append((idx, t.to(self.device)))
        return groups

    def encode_keeping_pooled(self, image: LoadedImage) -> EncodedImages:
        """One image's encoding with its RoI-aligned neck features kept (never cached): what
        scoring a run's checkpoints on held-out images re-uses (`train.heldout`)."""
        return self._encode_batch([image], keep_pooled=True)

    def _embed_regions(self, enc: EncodedImages, groups) -> list[torch.Tensor]:
        """Region-scorer features of each image's top-k boxes (highest objectness first), cropped
        from the image as given. CLIP: the crops of all images in one batch; others: per image."""
        k = [min(self.model.config.region_top_k, len(b)) for b in enc.boxes]
        boxes = torch.cat([b[:n].float() for b, n in zip(enc.boxes, k)])
        ratios = np.repeat(np.array([[o[1] / s[1], o[0] / s[0]] * 2 for s, o in zip(enc.image_sizes,
                                                                                   enc.original_sizes)],
                                    np.float32), k, axis=0)
        boxes = boxes * torch.from_numpy(ratios).to(boxes.device)  # in the pixels of the image as given
        images = [None] * len(k)
        for idx, t in groups:
            for j, i in enumerate(idx):
                images[i] = t[j]
        if hasattr(self.region_scorer, "embed_regions_batch"):
            return list(self.region_scorer.embed_regions_batch(groups, boxes, k).split(k))
        per_image = boxes.split(k)
        return [self.region_scorer.embed_regions(im.permute(2, 0, 1).float().div(255), b)
                for im, b in zip(images, per_image)]

    def clip_weights(self, names: list[str]) -> torch.Tensor | None:
        """Per-name ensemble weight w (None without region scoring)."""
        if self.region_scorer is None:
            return None
        from .region_scorer import class_weights

        trained = self.model.config.trained_class_names
        w_trained, w_untrained = self.model.ensemble_weights()
        key = ("w", tuple(names), tuple(trained), w_trained, w_untrained)
        if key not in self._vocabularies:  # same LRU as the embeddings (kept per vocabulary)
            self._vocabularies[key] = class_weights(names, trained, w_trained, w_untrained).to(self.device)
        return self._vocabularies[key]

    def name_readings(self, vocabulary, top: int = 3) -> list | None:
        """For each name, the ImageNet classes the offline model reads it as and whether it sees
        it at all (`detector.imagenet_scorer.NameReading`); None for a model that reads any name
        (CLIP region scores, or no region scorer). Cached per vocabulary (2,000 names: ~0.3 s)."""
        if getattr(self.region_scorer, "kind", None) != "imagenet":
            return None
        names, emb = self.embed(vocabulary)
        adapters_now = (len(self.model.name_adapters), self.model.name_adapters.deltas._version)  # trained in place
        key = (tuple(names), top, *adapters_now)
        cache = self._readings
        if key not in cache:
            adapters = self.model.name_adapters.offsets(emb)
            cache[key] = self.region_scorer.name_readings(emb, names, top, adapters)
            while len(cache) > 16:
                cache.popitem(last=False)
        return cache[key]

    def image_classes(self, image, top: int = 3, floor: float = 0.2) -> list[tuple[str, float]] | None:
        """What the offline model sees in an image whatever the vocabulary: the `top` ImageNet
        classes by their best box (probability >= `floor`), e.g. [("espresso", 0.69)] on
        scikit-image's coffee, where "cup" finds nothing: names a person can type instead. None
        for a model that reads any name (CLIP). Costs nothing more after a detection of the same
        image (its box distributions are cached)."""
        if self.region_scorer is None or self.region_scorer.kind != "imagenet":
            return None
        from .imagenet_scorer import imagenet_reading_names

        regions = self.encode([load_image(image)])[0].region_embeddings[0]
        if not len(regions):
            return []
        best, index = regions.float().max(dim=0).values.topk(top)
        names = imagenet_reading_names()
        return [(names[int(k)], round(float(p), 2)) for p, k in zip(best.cpu(), index.cpu()) if p >= floor]

    def predict(self, images, vocabulary, score_threshold: float | None = None,
                nms_threshold: float | None = None, max_detections: int | None = None,
                batch_size: int = 8) -> list[sv.Detections]:
        """Detections for each image (path, PIL image, array, bytes; one or a list).

        Boxes are in the pixel coordinates of the image as given (after EXIF rotation).
        """
        single = not isinstance(images, (list, tuple))
        loaded = [load_image(im) for im in ([images] if single else images)]
        names, emb = self.embed(vocabulary)
        if not loaded:
            return []
        batch = EncodedImages.concat(self.encode(loaded, batch_size=batch_size))
        with torch.inference_mode(), autocast_for(self.device):
            dets = self.model.detect_batch(batch, emb, score_threshold, nms_threshold, max_detections,
                                           region_scorer=self.region_scorer, clip_weights=self.clip_weights(names),
                                           names=names)
        return [to_detections(det, names, img.scale, img.array.shape[:2]) for img, det in zip(loaded, dets)]

    def assign(self, image, labels, vocabulary=None, num_proposals: int | None = None,
               training_size: int | None = None) -> Assignment:
        """Which proposal each image-label rule (max_size, image_box, max_score) would train.

        `labels` are the image's tags; `vocabulary` (default: the labels) is the class set;
        `training_size`: the shorter side training resizes tag images to (a run's `label_size`),
        so the candidates shown are exactly the ones training considers (default: `min_size`).
        """
        labels = parse_vocabulary(labels)
        names, emb = self.embed(vocabulary if vocabulary is not None else labels)
        index = {n.casefold(): i for i, n in enumerate(names)}
        unknown = [lb for lb in labels if lb.casefold() not in index]
        if unknown:
            raise ValueError(f"labels not in the vocabulary: {', '.join(unknown)}")
        img = load_image(image)
        t, scale = self._tensor(img), 1.0
        if training_size:
            t, scale = resize_shorter(t, training_size)
        with torch.inference_mode(), autocast_for(self.device):
            out = self.model.assign([t], [[index[lb.casefold()] for lb in labels]], emb, num_proposals,
                                    at_training_scale=bool(training_size))[0]
        out["proposals"] = out["proposals"] / scale
        rules = {r: [(c.proposal, [names[k] for k in c.labels]) for c in cs] for r, cs in out["choices"].items()}
        return Assignment(
            proposals=sv.clip_boxes(out["proposals"].float().cpu().numpy().reshape(-1, 4),
                                    img.array.shape[1::-1]) * img.scale,
            objectness=out["objectness"].float().cpu().numpy(),
            scores=out["scores"].float().cpu().numpy(),
            labels=labels,
            rules=rules,
        )


def padded_array(array: np.ndarray) -> np.ndarray:
    """An H x W x 3 image padded with black at the bottom / right to at most MAX_ASPECT : 1."""
    h, w = array.shape[:2]
    pad_h, pad_w = max(0, -(-w // MAX_ASPECT) - h), max(0, -(-h // MAX_ASPECT) - w)
    return np.pad(array, ((0, pad_h), (0, pad_w), (0, 0))) if pad_h or pad_w else array


def to_detections(det: dict[str, torch.Tensor], names: list[str], scale: float = 1.0,
                  size: tuple[int, int] | None = None) -> sv.Detections:
    """Boxes clipped to the decoded image (`size` = its height, width), then scaled to original pixels."""
    class_id, boxes, scores = (x.float().cpu().numpy() if isinstance(x, torch.Tensor) else x
                               for x in (det["labels"], det["boxes"], det["scores"]))
    class_id, boxes = class_id.astype(int), boxes.reshape(-1, 4)
    if size:  # padding (thin images) can leave boxes with nothing of the image inside: drop them
        boxes = sv.clip_boxes(boxes, size[::-1])  # (width, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, class_id = boxes[keep], scores[keep], class_id[keep]
    return sv.Detections(
        xyxy=boxes * scale,
        confidence=scores,
        class_id=class_id,
        data={"class_name": np.array([names[i] for i in class_id], dtype=object).astype(str)
              if len(class_id) else np.array([], dtype=str)},
    )
