"""Turning what a person types into a clean, ordered list of class names."""

from __future__ import annotations

import ast
import os
import re
import unicodedata
from collections.abc import Iterable

MAX_NAME_LENGTH = 200
# Names one vocabulary may hold: LVIS (1,203) fits. A detect over 4,000 names took 12 s on two CPU
# cores; 100,000 held a request for minutes and a suggestion pass grew to 21 GB (issue 21).
MAX_NAMES = int(os.environ.get("OVD_MAX_NAMES", "2000"))

COCO_CLASSES = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]

PRESETS = {
    "COCO (80 classes)": list(COCO_CLASSES),
    # names the offline model reads as what they mean (issue 20): it reads "book" as a bookcase,
    # "kettle" as a teapot and "lamp" as a candle too
    "Household": ["mug", "laptop", "potted plant", "teapot", "bottle", "chair", "table lamp", "remote"],
    # no "person" or "stop sign": the offline model sees neither (issue 20); CLIP models see any name
    "Street": ["car", "bicycle", "bus", "traffic light", "dog", "street sign", "motorcycle"],
}


def normalize_name(name: str) -> str:
    """NFC-normalise, drop control and invisible format characters (NUL, zero-width space / joiner,
    BOM, bidi controls), trim and collapse internal whitespace; case is kept."""
    name = unicodedata.normalize("NFC", str(name))
    name = "".join(" " if c in "\t\n\r" else c for c in name
                   if c in "\t\n\r" or unicodedata.category(c) not in ("Cc", "Cf"))
    return re.sub(r"\s+", " ", name).strip()


def clean_name(name: str) -> str:
    """The one name cleaner: `normalize_name`, then non-empty and at most MAX_NAME_LENGTH
    characters (ValueError otherwise). Vocabularies and stored labels both go through it."""
    name = normalize_name(name)
    if not name:
        raise ValueError("a name cannot be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"a name may have at most {MAX_NAME_LENGTH} characters: {name[:40]!r}…")
    return name


def _listed(text: str) -> list[str] | None:
    """The names of a vocabulary written as a list literal (`["cat", "cup"]`, or Python's
    `['cat', 'cup']`, which a list sent to the HTTP API's text field arrives as: it had been split at
    its commas into the names "['cat'" and "'cup']"); None for any other text."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def _has_meaning(name: str) -> bool:
    """Whether a name holds anything but spaces and punctuation (letters, digits, symbols, emoji)."""
    return any(not c.isspace() and not unicodedata.category(c).startswith("P") for c in name)


def parse_vocabulary(vocabulary: str | Iterable[str]) -> list[str]:
    """Names from a comma/newline separated string or an iterable, cleaned and de-duplicated.

    Order is kept (first occurrence wins, compared case-insensitively). An empty result is a
    `ValueError`, because a detector with no classes can only return nothing.
    """
    if isinstance(vocabulary, str):
        listed = _listed(vocabulary)
        parts: Iterable[str] = listed if listed is not None else re.split(r"[,\n]", vocabulary)
    elif vocabulary is None:
        parts = []
    else:
        parts = vocabulary
    names: list[str] = []
    seen: set[str] = set()
    for raw in parts:
        if not _has_meaning(normalize_name(raw)):  # "", or only punctuation (";" had become a class)
            continue
        name = clean_name(raw)
        key = name.casefold()
        if key not in seen:
            if len(names) == MAX_NAMES:
                raise ValueError(f"a vocabulary may hold at most {MAX_NAMES:,} names; this one has more "
                                 "(split it, or ask the operator to raise OVD_MAX_NAMES)")
            seen.add(key)
            names.append(name)
    if not names:
        raise ValueError("the vocabulary is empty: type at least one class name, e.g. 'cat, dog'")
    return names
