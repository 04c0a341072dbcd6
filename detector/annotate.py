"""Drawing and serialising detections: the one module that turns `sv.Detections` into pictures,
records and COCO annotations (supervision's annotators, with supervision's own size scaling).

Boxes always arrive in the original image's pixels. Drawing happens on the decoded pixels of a
`LoadedImage`, which may be downscaled, so boxes are mapped onto them here and nowhere else.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import supervision as sv
from PIL import Image, ImageFont

from .images import LoadedImage

LOW_CONFIDENCE_COLOUR = (160, 160, 160)
LOW_CONFIDENCE_PLATE = (80, 80, 80)  # behind a guess's white label
RULE_COLOURS = {"max_size": sv.Color.from_hex("#e6194b"), "image_box": sv.Color.from_hex("#3cb44b"),
                "max_score": sv.Color.from_hex("#4363d8")}
_INDEX = sv.ColorLookup.INDEX
MAX_LABEL_CHARS = 40  # a longer name is cut with "…" on the picture (it ran off the image); tables keep it whole


@functools.cache
def _font_path() -> str | None:
    """DejaVu Sans, which matplotlib (a dependency of supervision) ships: accented Latin, Greek,
    Cyrillic, Hebrew and Arabic (right to left, with Pillow's raqm) and many emoji. supervision's
    default labels are OpenCV's text: an emoji was drawn "?", Hebrew left to right."""
    try:
        import matplotlib
    except ImportError:
        return None
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return str(path) if path.is_file() else None


@functools.cache
def _font(size: int):
    path = _font_path()
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size)


def _labels(wh: tuple[int, int], **kwargs) -> sv.RichLabelAnnotator:
    """Box labels in `_font`, sized for the picture as supervision sizes its own."""
    scale = sv.calculate_optimal_text_scale(wh)
    return sv.RichLabelAnnotator(font_path=_font_path(), font_size=max(10, round(22 * scale)),
                                 text_padding=max(3, round(6 * scale)), smart_position=True, **kwargs)


def _short(name: str) -> str:
    return name if len(name) <= MAX_LABEL_CHARS else name[:MAX_LABEL_CHARS - 1] + "…"


def detections_to_records(detections: sv.Detections) -> list[dict]:
    """JSON-ready list: one {"box": [x1, y1, x2, y2], "score", "class_id", "class_name"} each
    (and "low_confidence": true for a best guess below the threshold, `detector.low_confidence`)."""
    names = detections.data.get("class_name", [])
    low = detections.data.get("low_confidence", np.zeros(len(detections), dtype=bool))
    return [
        {
            "box": [round(float(v), 2) for v in detections.xyxy[i]],
            "score": round(float(detections.confidence[i]), 4),
            "class_id": int(detections.class_id[i]),
            "class_name": str(names[i]),
            **({"low_confidence": True} if low[i] else {}),
        }
        for i in range(len(detections))
    ]


def coco_annotations(detections: sv.Detections, image_id: int, category_ids: list[int],
                     first_id: int = 1) -> list[dict]:
    """COCO result/annotation dicts (bbox = x, y, w, h) for one image; `category_ids[class_id]`."""
    out = []
    for i, ((x1, y1, x2, y2), score, c) in enumerate(zip(detections.xyxy, detections.confidence,
                                                         detections.class_id)):
        w, h = float(x2 - x1), float(y2 - y1)
        out.append({"id": first_id + i, "image_id": image_id, "category_id": int(category_ids[int(c)]),
                    "bbox": [float(x1), float(y1), w, h], "area": w * h, "score": float(score), "iscrowd": 0})
    return out


def _canvas(image: LoadedImage | np.ndarray) -> tuple[Image.Image, float]:
    """(PIL canvas, original-to-canvas factor). PIL, because supervision treats arrays as BGR."""
    if isinstance(image, LoadedImage):
        return Image.fromarray(image.array), 1.0 / image.scale
    return Image.fromarray(np.asarray(image)), 1.0


def annotate(image: LoadedImage | np.ndarray, detections: sv.Detections,
             low_confidence: sv.Detections | None = None) -> np.ndarray:
    """RGB uint8 picture with boxes and "name 0.87" labels, line and text sized for the picture;
    `low_confidence` boxes (best guesses below the threshold) dashed grey, "name 0.12?". Boxes are
    drawn lowest score first, so where two coincide (a cat that is also read as a kitten) the
    better one is the one on top."""
    canvas, factor = _canvas(image)
    if low_confidence is not None and len(low_confidence):
        canvas = _draw_dashed(canvas, low_confidence, factor)
    detections = detections[np.argsort(detections.confidence, kind="stable")]
    shown = sv.Detections(xyxy=detections.xyxy * factor, confidence=detections.confidence,
                          class_id=detections.class_id)
    wh = canvas.size
    boxes = sv.BoxAnnotator(thickness=sv.calculate_optimal_line_thickness(wh), color_lookup=sv.ColorLookup.CLASS)
    labels = _labels(wh, color_lookup=sv.ColorLookup.CLASS)
    texts = [f"{_short(n)} {c:.2f}" for n, c in zip(detections.data.get("class_name", []), detections.confidence)]
    return np.asarray(labels.annotate(boxes.annotate(canvas, shown), shown, labels=texts))


def draw_assignment(image: LoadedImage | np.ndarray, assignment, faint: int = 50) -> np.ndarray:
    """Top `faint` proposals in thin grey; per rule, its chosen proposal in the rule's colour,
    labelled 'rule: label, label' (see `Predictor.assign`)."""
    canvas, factor = _canvas(image)
    wh = canvas.size
    proposals = assignment.proposals * factor
    n = len(proposals) - 1  # the whole-image box is last
    if n > 0 and faint > 0:
        grey = sv.Detections(xyxy=proposals[: min(n, faint)].astype(np.float32))
        canvas = sv.BoxAnnotator(color=sv.Color.from_hex("#bbbbbb"), thickness=1,
                                 color_lookup=_INDEX).annotate(canvas, grey)
    thickness = sv.calculate_optimal_line_thickness(wh) + 1
    # The whole-image box first and drawn further inside the border: a chosen proposal as large as
    # the image (max_size often picks one) is drawn over it, along the border, so both stay visible.
    ordered = sorted(assignment.rules.items(), key=lambda item: all(i == n for i, _ in item[1]), reverse=True)
    for rule, choices in ordered:
        if not choices:
            continue
        boxes = np.array([proposals[i] for i, _ in choices], dtype=np.float32)
        # Chosen boxes just inside the border (so they stay visible), the whole-image box further in.
        inset = np.array([[3 * thickness if i == n else thickness] for i, _ in choices], dtype=np.float32)
        boxes = np.clip(boxes, inset, np.array([wh[0] - 1, wh[1] - 1] * 2, dtype=np.float32) - inset)
        det = sv.Detections(xyxy=boxes)
        colour = RULE_COLOURS.get(rule, sv.Color.WHITE)
        canvas = sv.BoxAnnotator(color=colour, thickness=thickness, color_lookup=_INDEX).annotate(canvas, det)
        canvas = _labels(wh, color=colour, color_lookup=_INDEX).annotate(
            canvas, det, labels=[_short(f"{rule}: {', '.join(names)}") for _, names in choices])
    return np.asarray(canvas)


def _draw_dashed(canvas: Image.Image, detections: sv.Detections, factor: float) -> Image.Image:
    """Dashed grey boxes labelled "name 0.12?": visibly not detections."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(canvas)
    width = max(1, sv.calculate_optimal_line_thickness(canvas.size))
    dash = 6 * width
    names = detections.data.get("class_name", [""] * len(detections))
    font = _font(max(12, round(min(canvas.size) / 30)))  # sized for the picture
    for (x1, y1, x2, y2), score, name in zip(detections.xyxy * factor, detections.confidence, names):
        for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
            length = max(abs(b[0] - a[0]), abs(b[1] - a[1]))
            for t in np.arange(0, length, 2 * dash):
                s, e = t / max(length, 1), min(t + dash, length) / max(length, 1)
                draw.line([(a[0] + (b[0] - a[0]) * s, a[1] + (b[1] - a[1]) * s),
                           (a[0] + (b[0] - a[0]) * e, a[1] + (b[1] - a[1]) * e)], fill=LOW_CONFIDENCE_COLOUR,
                          width=width)
        _label(draw, (x1 + width + 2, y1 + width + 2), f"{_short(name)} {score:.2f}?", font)
    return canvas


def _label(draw, xy: tuple[float, float], text: str, font) -> None:
    """White text on a grey plate: readable on any photo (thin grey text vanished on light ones)."""
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill=LOW_CONFIDENCE_PLATE)
    draw.text(xy, text, fill="white", font=font)
