"""How long the Tag queue's "with suggestion" pass takes over a store of real photos (issue 19: 32
images in at most a minute on 2 idle cores), next to one torchvision `fasterrcnn_resnet50_fpn`
inference at 640 px measured in the same process.

The store holds `--images` photographs from scikit-image (each distinct photo once, then shifted
copies, so no two images are the same bytes); the pass is `AppService.find_suggestions` (the
background pass the Tag tab starts, waited for) with the served model (default `offline`).

    python bench/suggest_speed.py [--images 32] [--model offline] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_speed import baseline_seconds  # noqa: E402

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "cat", "camera", "page", "horse", "moon", "text",
          "brick", "grass", "gravel", "retina", "eagle", "colorwheel"]


def photos() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in PHOTOS:
        try:
            img = getattr(data, name)()
        except Exception:  # noqa: BLE001 - a photo this scikit-image version lacks
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        elif img.dtype != np.uint8:
            img = (img / img.max() * 255).astype(np.uint8)
        out.append((np.stack([img] * 3, -1) if img.ndim == 2 else img)[..., :3])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--model", default="offline")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vocabulary", default="person, cat, cup, rocket, dog, horse, bird")
    args = ap.parse_args()
    from app.service import SUGGEST_SIDE, AppService

    base = baseline_seconds(torch.device(args.device), 3)
    service = AppService(tempfile.mkdtemp(prefix="suggest-speed-"), model=args.model, device=args.device)
    pool, i = photos(), 0
    while len(service.store.images()) < args.images:
        img = pool[i % len(pool)]
        service.store.add_image(np.ascontiguousarray(np.roll(img, 17 * (i // len(pool)), axis=1)), f"p{i}.png")
        i += 1
    t = time.perf_counter()
    found = service.find_suggestions(args.vocabulary)
    seconds = time.perf_counter() - t
    print(f"{args.images} images, model {args.model} on {args.device}, pass at a shorter side of {SUGGEST_SIDE} px: "
          f"{seconds:.1f} s ({seconds / args.images:.2f} s per image; one torchvision fasterrcnn_resnet50_fpn "
          f"inference at 640 px: {base:.2f} s, ratio per image {seconds / args.images / base:.2f}); "
          f"images to review: {found.get('to_review')}")


if __name__ == "__main__":
    main()
