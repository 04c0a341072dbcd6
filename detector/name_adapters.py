"""What a person's tags teach the offline region scorer: which ImageNet classes each name means.

The ImageNet region scorer (`detector.imagenet_scorer`) reads a name as the ImageNet-1k classes
whose descriptions its text embedding matches: a(name, k) = sigmoid(L0(name, k)),
L0 = (cos(t_name, m_k) - c) / T. Text alone gets many names wrong ("person" matches no class
well; "book" lands on "bookcase"). A tagged image says which name is in it, and the region
scorer says which ImageNet classes its regions look like, so tags can correct the mapping:

    a'(name, k) = sigmoid(L0(name, k) + delta(name, k))

`NameAdapters` holds one learned delta row [1000] per tagged name, keyed by the name's text
embedding (the one thing the scorer receives for a name), so it applies in any vocabulary that
contains the name, and in none that does not. It is part of the detector's state (saved and
loaded with every checkpoint); an empty one changes nothing. The rows are trained by
`train.tag_features` (Detic's max-size rule on the scorer's region distributions) and kept only
when the held-out tags say they help (`train.heldout`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MATCH_COSINE = 0.999  # a vocabulary row is a stored name when its text embedding is this close


class NameAdapters(nn.Module):
    def __init__(self, embed_dim: int, classes: int = 1000):
        super().__init__()
        self.register_buffer("embeddings", torch.zeros(0, embed_dim))
        self.deltas = nn.Parameter(torch.zeros(0, classes))

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def extend(self, embeddings: torch.Tensor) -> list[int]:
        """Rows for these name embeddings (new ones start at zero: no change); their indices."""
        emb = F.normalize(embeddings.detach().float().to(self.embeddings.device), dim=-1)
        rows = self.rows(emb)
        new = [i for i, r in enumerate(rows) if r < 0]
        if new:
            self.embeddings = torch.cat([self.embeddings, emb[new]])
            self.deltas = nn.Parameter(torch.cat([self.deltas.detach(),
                                                  self.deltas.new_zeros(len(new), self.deltas.shape[1])]))
        return self.rows(emb)

    def rows(self, class_embeddings: torch.Tensor) -> list[int]:
        """For each vocabulary row, the index of its stored name (-1: not a tagged name)."""
        if len(self) == 0 or len(class_embeddings) == 0:
            return [-1] * len(class_embeddings)
        sim = F.normalize(class_embeddings.float().to(self.embeddings.device), dim=-1) @ self.embeddings.t()
        best = sim.max(dim=1)
        return [int(i) if v >= MATCH_COSINE else -1 for v, i in zip(best.values.tolist(), best.indices.tolist())]

    def offsets(self, class_embeddings: torch.Tensor) -> torch.Tensor | None:
        """[C, classes] deltas for a vocabulary (zero rows for untagged names); None when none applies."""
        rows = self.rows(class_embeddings)
        if all(r < 0 for r in rows):
            return None
        idx = torch.tensor([max(r, 0) for r in rows], device=self.deltas.device)
        mask = torch.tensor([r >= 0 for r in rows], device=self.deltas.device, dtype=self.deltas.dtype)
        return self.deltas[idx] * mask[:, None]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A checkpoint's adapters have as many rows as it had tagged names: take its shape.
        Checkpoints from before adapters existed have none (nothing to load, nothing changes)."""
        emb, deltas = state_dict.get(prefix + "embeddings"), state_dict.get(prefix + "deltas")
        if emb is None and deltas is None:
            return
        if emb is not None and deltas is not None:
            self.embeddings = torch.zeros_like(emb, device=self.embeddings.device)
            self.deltas = nn.Parameter(torch.zeros_like(deltas, device=self.deltas.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
