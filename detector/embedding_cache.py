"""Class-name embeddings cached in memory and on disk, so re-typing a vocabulary is free.

Keyed by (encoder key, prompt, name). The disk cache is one SQLite file (WAL, one transaction
per batch of new names) so several processes can share it safely; if it cannot be opened the
cache silently degrades to memory only.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import torch

from .text_encoders import TextEncoder
from .vocabulary import parse_vocabulary

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    root = os.environ.get("OVD_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ovdet")
    return Path(root)


class EmbeddingCache:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_cache_dir() / "text_embeddings.sqlite"
        self._memory: dict[tuple[str, str, str], np.ndarray] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (encoder TEXT NOT NULL, prompt TEXT NOT NULL,"
                " name TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (encoder, prompt, name))"
            )
            db.commit()
            self._db = db
        except sqlite3.Error as e:
            log.warning("text-embedding disk cache unavailable at %s (%s); memory only", self.path, e)

    def get_many(self, encoder: str, prompt: str, names: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        missing = []
        with self._lock:
            for n in names:
                v = self._memory.get((encoder, prompt, n))
                if v is None:
                    missing.append(n)
                else:
                    found[n] = v
            if missing and self._db is not None:
                for i in range(0, len(missing), 500):
                    chunk = missing[i : i + 500]
                    rows = self._db.execute(
                        "SELECT name, vector FROM embeddings WHERE encoder=? AND prompt=? AND name IN "
                        f"({','.join('?' * len(chunk))})",
                        [encoder, prompt, *chunk],
                    ).fetchall()
                    for name, blob in rows:
                        v = np.frombuffer(blob, dtype=np.float32).copy()
                        self._memory[(encoder, prompt, name)] = v
                        found[name] = v
        return found

    def put_many(self, encoder: str, prompt: str, vectors: dict[str, np.ndarray]) -> None:
        with self._lock:
            for n, v in vectors.items():
                self._memory[(encoder, prompt, n)] = v
            if self._db is None:
                return
            try:
                with self._db:  # one transaction
                    self._db.executemany(
                        "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                        [(encoder, prompt, n, v.astype(np.float32).tobytes()) for n, v in vectors.items()],
                    )
            except sqlite3.Error as e:
                log.warning("could not write text-embedding cache (%s)", e)


class VocabularyEmbedder:
    """Names -> `[C, D]` normalised embeddings of `prompt.format(name)`, computing only new names."""

    def __init__(self, encoder: TextEncoder, prompt: str = "a {}", cache: EmbeddingCache | None = None):
        self.encoder = encoder
        self.prompt = prompt
        self.cache = cache if cache is not None else shared_cache()
        self.encoded_count = 0  # names actually sent through the encoder (observability + tests)

    @classmethod
    def for_config(cls, config) -> VocabularyEmbedder:
        """The embedder a detector config names (its text encoder and prompt)."""
        from .text_encoders import build_text_encoder

        return cls(build_text_encoder(config.text_encoder, config.text_encoder_options), config.prompt)

    def __call__(self, vocabulary) -> tuple[list[str], torch.Tensor]:
        names = parse_vocabulary(vocabulary)
        found = self.cache.get_many(self.encoder.key, self.prompt, names)
        missing = [n for n in names if n not in found]
        if missing:
            new = {}
            for i in range(0, len(missing), 256):
                chunk = missing[i : i + 256]
                vecs = self.encoder.encode([self.prompt.format(n) for n in chunk]).numpy()
                new.update(zip(chunk, vecs))
            self.encoded_count += len(missing)
            self.cache.put_many(self.encoder.key, self.prompt, new)
            found.update(new)
        return names, torch.from_numpy(np.stack([found[n] for n in names]))


_shared: EmbeddingCache | None = None


def shared_cache() -> EmbeddingCache:
    global _shared
    if _shared is None:
        _shared = EmbeddingCache()
    return _shared
