"""Batch-1 CPU time of `Predictor.predict` with the `offline` preset on a real photo, for A/B runs.

Run it from two source trees in alternation (e.g. a checkout of the previous commit and this
one), so that a busy machine slows both alike; it prints one JSON line per run:

    for i in 1 2 3; do (cd OLD && python bench/offline_ab.py); python bench/offline_ab.py; done
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path.cwd()))

from detector import Predictor  # noqa: E402
from detector.vocabulary import COCO_CLASSES  # noqa: E402


def main(size: int = 640, runs: int = 5) -> None:
    from PIL import Image
    from skimage import data

    photo = np.array(Image.fromarray(data.astronaut()).resize((size * 4 // 3, size)))
    predictor = Predictor.from_pretrained("offline", device="cpu").at_size(size)
    predictor.cache_size = 0
    vocab = list(COCO_CLASSES)
    predictor.predict(photo, vocab)  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        predictor.predict(photo, vocab)
        times.append(time.perf_counter() - t)
    print(json.dumps({"tree": str(Path.cwd()), "size": size, "median_s": statistics.median(times),
                      "min_s": min(times), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
