"""Open-vocabulary detection (Detic's zero-shot classifier on a frozen backbone), without any UI.

    from detector import Predictor
    predictor = Predictor.from_pretrained("offline")          # or a folder, or "owner/repo"
    detections = predictor.predict("photo.jpg", "mug, laptop")  # -> [supervision.Detections]
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import DetectorConfig
from .hub import HubUnavailableError
from .images import ImageLoadError, load_image
from .model import OpenVocabDetector
from .predictor import Assignment, Predictor
from .presets import PRESETS, load_detector
from .vocabulary import parse_vocabulary

__all__ = [
    "Assignment", "CheckpointError", "DetectorConfig", "HubUnavailableError", "ImageLoadError",
    "OpenVocabDetector", "PRESETS", "Predictor", "load_checkpoint", "load_detector", "load_image",
    "parse_vocabulary", "save_checkpoint",
]
