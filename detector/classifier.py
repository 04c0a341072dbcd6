"""Detic's zero-shot classifier and the class-agnostic box predictor that sits beside it.

logits = temperature * normalize(W x) @ [normalize(E); 0]^T + b

where E are the fixed text embeddings of the vocabulary (one row per class name), the appended
zero row is the background column and b is one learned scalar bias initialised from a prior
probability. Changing the vocabulary changes E and nothing else.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ZeroShotClassifier(nn.Module):
    def __init__(self, in_features: int, embed_dim: int, temperature: float = 50.0, prior_prob: float = 0.01):
        super().__init__()
        self.linear = nn.Linear(in_features, embed_dim)
        self.bias = nn.Parameter(torch.tensor(-math.log((1 - prior_prob) / prior_prob)))
        self.temperature = temperature
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """`x`: [N, in_features]; `class_embeddings`: [C, D]. Returns [N, C + 1] (background last)."""
        if class_embeddings.ndim != 2 or class_embeddings.shape[1] != self.embed_dim:
            raise ValueError(
                f"class embeddings must be [C, {self.embed_dim}], got {tuple(class_embeddings.shape)}"
                " (is the vocabulary encoded with the text encoder this model was built for?)"
            )
        z = F.normalize(self.linear(x), dim=-1)
        w = F.normalize(class_embeddings.to(z.dtype), dim=-1)
        w = torch.cat([w, w.new_zeros(1, w.shape[1])], dim=0)
        return self.temperature * z @ w.t() + self.bias


class ZeroShotBoxPredictor(nn.Module):
    """Classification (zero-shot) and class-agnostic box regression from RoI features."""

    def __init__(self, in_features: int, embed_dim: int, temperature: float, prior_prob: float):
        super().__init__()
        self.cls_score = ZeroShotClassifier(in_features, embed_dim, temperature, prior_prob)
        self.bbox_pred = nn.Linear(in_features, 4)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor, class_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x, class_embeddings), self.bbox_pred(x)
