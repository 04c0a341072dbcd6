"""Never a silent empty answer: when no box reaches the threshold, the best candidate per name,
marked "low confidence" (drawn dashed by `detector.annotate`, said so by the app).

A person who types "cup, spoon" and gets nothing cannot tell "not there" from "there, but the
model is unsure"; the best guesses (at most `MAX_GUESSES`, each above `FLOOR`) show which."""

from __future__ import annotations

import numpy as np
import supervision as sv

MAX_GUESSES = 5
FLOOR = 0.01  # below this a guess says nothing: a photo with no nameable object gets no box at all


def top_per_name(detections: sv.Detections, limit: int = MAX_GUESSES) -> sv.Detections:
    """The highest-scoring box of each name, best first, at most `limit`, with
    `data["low_confidence"]` set (True for every box)."""
    order = np.argsort(-detections.confidence, kind="stable")
    first: dict[int, int] = {}
    for i in order:
        first.setdefault(int(detections.class_id[i]), int(i))
    keep = np.array(list(first.values())[:limit], dtype=int)
    out = detections[keep] if len(keep) else detections[np.zeros(0, dtype=int)]
    out.data["low_confidence"] = np.ones(len(out), dtype=bool)
    return out


def best_guesses(predictor, image, vocabulary, nms_threshold: float | None = None,
                 limit: int = MAX_GUESSES, floor: float = FLOOR) -> sv.Detections:
    """`top_per_name` of `predictor`'s boxes scoring above `floor` (the image's encoding is
    cached by the predictor, so after a `predict` of the same image this only re-scores)."""
    det = predictor.predict(image, vocabulary, score_threshold=floor, nms_threshold=nms_threshold,
                            max_detections=100)[0]
    return top_per_name(det, limit)
