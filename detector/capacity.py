"""Head capacity and backbone fine-tuning: the choices Vasconcelos et al. (CVPR 2022) measure.

Their finding: with a frozen pre-trained backbone, the detector-specific parts (neck, RPN, box
head) need enough capacity; then freezing matches or beats fine-tuning at a fraction of the
memory and time. `HEAD_PRESETS` names three capacities by what they cost; `BACKBONE_CHOICES`
names how much of the backbone trains. `rebuild` turns a loaded detector into one with other
choices, keeping every weight that still fits and saying which parts start fresh.
bench/reuse.py measures them (docs/experiments.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import BACKBONE_CHOICES, HEAD_FIELDS, HEAD_PRESETS, DetectorConfig


def head_preset_of(config: DetectorConfig) -> str | None:
    """The preset `config`'s heads match, or None for a custom head."""
    for name, fields in HEAD_PRESETS.items():
        if all(getattr(config, k) == v for k, v in fields.items()):
            return name
    return None


def backbone_choice_of(config: DetectorConfig) -> str | None:
    if config.freeze_backbone:
        return "frozen"
    return next((k for k, v in BACKBONE_CHOICES.items() if v == config.backbone_trainable_stages), None)


def with_choices(config: DetectorConfig, heads: str | None = None, backbone: str | None = None) -> DetectorConfig:
    """`config` with a head preset and / or a backbone choice applied (None: unchanged)."""
    changes: dict = {}
    if heads:
        if heads not in HEAD_PRESETS:
            raise ValueError(f"unknown head preset {heads!r}; choose one of {', '.join(HEAD_PRESETS)}")
        changes.update(HEAD_PRESETS[heads])
    if backbone:
        if backbone not in BACKBONE_CHOICES:
            raise ValueError(f"unknown backbone choice {backbone!r}; choose one of {', '.join(BACKBONE_CHOICES)}")
        stages = BACKBONE_CHOICES[backbone]
        changes.update(freeze_backbone=stages == 0, backbone_trainable_stages=stages or config.backbone_trainable_stages)
    return config.replace(**changes)


@dataclass
class RebuildReport:
    kept: int  # tensors carried over from the loaded model
    fresh: list[str]  # parts that start from a new initialisation ("neck", "RPN", "box head", ...)

    def describe(self) -> str:
        return "kept every weight" if not self.fresh else f"fresh {', '.join(self.fresh)}; {self.kept} tensors kept"


def rebuild(model, heads: str | None = None, backbone: str | None = None, seed: int = 0):
    """(detector with the choices applied, RebuildReport). Returns `model` itself when nothing
    changes. New heads start fresh (seeded), so the RPN counts as untrained again and the
    classifier forgets its trained names; the backbone's weights always carry over."""
    from .model import OpenVocabDetector

    old = model.config
    config = with_choices(old, heads, backbone)
    if config == old:
        return model, RebuildReport(kept=len(model.state_dict()), fresh=[])
    heads_changed = any(getattr(config, k) != getattr(old, k) for k in HEAD_FIELDS)
    if heads_changed:
        config = config.replace(rpn_trained=False, trained_class_names=[], pretrained_heads="")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = OpenVocabDetector(config.replace(backbone_weights="none"))
    new.config = config
    state = model.state_dict()
    # the body and what tags taught the region scorer (detector.name_adapters) never depend on the heads
    keep = {k: v for k, v in state.items() if not heads_changed or k.startswith(("backbone.body.", "name_adapters."))}
    result = new.load_state_dict(keep, strict=False)
    expected_missing = {k for k in new.state_dict() if k not in keep}
    if set(result.missing_keys) != expected_missing or result.unexpected_keys:  # never a silent partial load
        raise RuntimeError(f"rebuild did not carry the weights over: missing {result.missing_keys[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}")
    new.backbone_pretrained = model.backbone_pretrained
    new.class_names, new.class_embeddings = model.class_names, model.class_embeddings.clone()
    fresh = ["neck", "RPN", "box head", "classifier projection"] if heads_changed else []
    return new.to(next(model.parameters()).device), RebuildReport(kept=len(keep), fresh=fresh)


def parameter_counts(config: DetectorConfig) -> dict[str, int]:
    """Parameters of the backbone body, the neck + RPN + box head, and those that train."""
    from .model import OpenVocabDetector

    model = OpenVocabDetector(config.replace(backbone_weights="none"))
    body = sum(p.numel() for p in model.backbone.body.parameters())
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"backbone": body, "heads": total - body, "trainable": trainable, "total": total}
