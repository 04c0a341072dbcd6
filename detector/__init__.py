"""Open-vocabulary detection (Detic's zero-shot classifier on a frozen backbone), without any UI.

    from detector import Predictor
    predictor = Predictor.from_pretrained("offline")          # or a folder, or "owner/repo"
    detections = predictor.predict("photo.jpg", "mug, laptop")  # -> [supervision.Detections]

Names are imported lazily, so torch-free modules (`detector.config`, `detector.files`,
`detector.vocabulary`) can be used by the app and the training configuration without loading torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"  # the package's one version: pyproject.toml reads it from here

_EXPORTS = {
    "Assignment": "predictor", "CheckpointError": "checkpoint", "DetectorConfig": "config",
    "HubUnavailableError": "hub", "ImageLoadError": "images", "OpenVocabDetector": "model",
    "PRESETS": "presets", "Predictor": "predictor", "load_checkpoint": "checkpoint",
    "load_detector": "presets", "load_image": "images", "parse_vocabulary": "vocabulary",
    "save_checkpoint": "checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'detector' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
