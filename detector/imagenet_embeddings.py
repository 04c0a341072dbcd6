"""The ImageNet class texts' MiniLM embeddings, shipped with the package so that the first
launch does not spend minutes embedding 1000 sentences on a CPU.

`detector/imagenet_text_embeddings.safetensors` holds [1000, 384] fp16 embeddings of
`imagenet_class_texts()` (in that order) by the encoder named in its metadata, with a hash of the
texts: if the texts or the encoder change, the file no longer applies (`shipped_embeddings` returns
None) and the scorer computes them once into the disk cache instead. Regenerate it with

    python -m detector.imagenet_embeddings
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

SHIPPED = Path(__file__).with_name("imagenet_text_embeddings.safetensors")


def texts_hash(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def shipped_embeddings(encoder_key: str, texts: list[str], path: Path = SHIPPED) -> torch.Tensor | None:
    """[len(texts), D] float32 from the shipped file when it was made by `encoder_key` from
    exactly `texts`; None otherwise (or when the file is missing)."""
    from safetensors import safe_open

    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("encoder") != encoder_key or meta.get("texts_sha256") != texts_hash(texts):
            return None
        return f.get_tensor("embeddings").float()


def write_shipped(encoder, texts: list[str], path: Path = SHIPPED) -> Path:
    """Embed `texts` with `encoder` and write them (fp16) with the metadata that keys them."""
    from safetensors.torch import save_file

    from .imagenet_scorer import embed_texts

    emb = embed_texts(encoder, texts).float()  # through the disk cache: the same vectors
    save_file({"embeddings": emb.half().contiguous()}, str(path),
              metadata={"encoder": encoder.key, "texts_sha256": texts_hash(texts), "count": str(len(texts))})
    return path


def main() -> None:
    from .imagenet_scorer import imagenet_class_texts
    from .text_encoders import build_text_encoder

    path = write_shipped(build_text_encoder("minilm"), imagenet_class_texts())
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
