"""Drawing and serialising detections (supervision annotators; data stays in sv.Detections)."""

from __future__ import annotations

import numpy as np
import supervision as sv
from PIL import Image


def detections_to_records(detections: sv.Detections) -> list[dict]:
    """JSON-ready list: one {"box": [x1, y1, x2, y2], "score", "class_id", "class_name"} each."""
    names = detections.data.get("class_name", [])
    return [
        {
            "box": [round(float(v), 2) for v in detections.xyxy[i]],
            "score": round(float(detections.confidence[i]), 4),
            "class_id": int(detections.class_id[i]),
            "class_name": str(names[i]),
        }
        for i in range(len(detections))
    ]


def annotate(image: np.ndarray, detections: sv.Detections) -> np.ndarray:
    """RGB uint8 image with boxes and "name 0.87" labels drawn; line width scales with size."""
    scale = max(image.shape[:2]) / 640
    thickness = max(1, round(2 * scale))
    boxes = sv.BoxAnnotator(thickness=thickness, color_lookup=sv.ColorLookup.CLASS)
    labels = sv.LabelAnnotator(text_scale=max(0.4, 0.5 * scale), text_thickness=max(1, round(scale)),
                               text_padding=max(2, round(4 * scale)), color_lookup=sv.ColorLookup.CLASS,
                               smart_position=True)
    texts = [f"{n} {c:.2f}" for n, c in zip(detections.data.get("class_name", []), detections.confidence)]
    # Annotate a PIL image: supervision treats numpy arrays as BGR (OpenCV), ours are RGB.
    out = boxes.annotate(Image.fromarray(image), detections)
    return np.asarray(labels.annotate(out, detections, labels=texts))
