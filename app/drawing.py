"""Drawing the image-label assignment: faint proposals, each rule's chosen proposal highlighted."""

from __future__ import annotations

import numpy as np
import supervision as sv
from PIL import Image

from detector.predictor import Assignment

INDEX = sv.ColorLookup.INDEX
RULE_COLOURS = {"max_size": sv.Color.from_hex("#e6194b"), "image_box": sv.Color.from_hex("#3cb44b"),
                "max_score": sv.Color.from_hex("#4363d8")}


def draw_assignment(image: np.ndarray, a: Assignment, faint: int = 50) -> np.ndarray:
    """Top `faint` proposals in thin grey; per rule, its proposal in the rule's colour, labelled
    'rule: label, label'."""
    out = Image.fromarray(image)  # PIL: supervision then handles RGB correctly (arrays are BGR to it)
    n = len(a.proposals) - 1  # the whole-image box is last
    if n > 0:
        faint_boxes = sv.Detections(xyxy=a.proposals[: min(n, faint)].astype(np.float32))
        out = sv.BoxAnnotator(color=sv.Color.from_hex("#bbbbbb"), thickness=1, color_lookup=INDEX).annotate(out, faint_boxes)
    scale = max(image.shape[:2]) / 640
    for rule, choices in a.rules.items():
        if not choices:
            continue
        boxes = np.array([a.proposals[i] for i, _ in choices], dtype=np.float32)
        # Shrink the whole-image box a little so it stays visible at the border.
        boxes = np.clip(boxes, 2, [image.shape[1] - 3, image.shape[0] - 3] * 2)
        det = sv.Detections(xyxy=boxes)
        colour = RULE_COLOURS.get(rule, sv.Color.WHITE)
        out = sv.BoxAnnotator(color=colour, thickness=max(2, round(3 * scale)), color_lookup=INDEX).annotate(out, det)
        out = sv.LabelAnnotator(color=colour, text_scale=max(0.4, 0.5 * scale), smart_position=True, color_lookup=INDEX,
                                text_padding=max(2, round(3 * scale))).annotate(
            out, det, labels=[f"{rule}: {', '.join(names)}" for _, names in choices])
    return np.asarray(out)
