"""What a visitor's large requests cost the Detect tab's server (docs/security.md, "Resources").

Through the app's own service (`AppService`, what the UI and the API call), with the packaged
`offline` model, in this process:

- Detect all on `--images` new 4000 x 4000 photos (solid colours, written to a temporary folder):
  the process's peak resident memory before and after the call;
- one image at threshold 0 with a 2,000-name vocabulary: the first call (its names embedded: the
  text-embedding cache is a fresh one in the temporary folder) and the median of three more.

    python bench/detect_limits.py [--images 8] [--side 4000]

Run it in a fresh process with nothing else running: the peak is the process's whole life's.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8, help="new photos in one Detect all (default 8)")
    ap.add_argument("--side", type=int, default=4000, help="their side in pixels (default 4000)")
    args = ap.parse_args(argv)
    from PIL import Image
    from skimage import data

    from app.service import AppService
    from detector import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["OVD_CACHE_DIR"] = str(Path(tmp) / "cache")  # read when the model is loaded below
        paths = []
        colours = np.random.default_rng(int(time.time())).integers(0, 255, (args.images, 3))  # new pixels: no cache
        for i, colour in enumerate(colours):
            paths.append(str(Path(tmp) / f"big{i}.png"))
            Image.new("RGB", (args.side, args.side), tuple(int(c) for c in colour)).save(paths[-1], compress_level=1)
        service = AppService(Path(tmp) / "data", predictor=Predictor.from_pretrained("offline"))
        before = peak_gb()
        t = time.perf_counter()
        service.detect_batch(paths, "cat, dog", 0.2, 0.5, 100)
        print(f"Detect all, {args.images} new {args.side} x {args.side} photos: peak {before:.2f} GB before the call, "
              f"{peak_gb():.2f} GB after, {time.perf_counter() - t:.1f} s")
        names = ", ".join(f"thing {i:04d}" for i in range(2000))
        photo = data.chelsea()
        t = time.perf_counter()
        service.detect(photo, names, 0.0, 0.5, 100)
        first = time.perf_counter() - t
        again = []
        for _ in range(3):
            t = time.perf_counter()
            service.detect(photo, names, 0.0, 0.5, 100)
            again.append(time.perf_counter() - t)
        print(f"threshold 0, 2,000 new names: first call {first:.2f} s (names embedded), "
              f"then median {statistics.median(again):.2f} s")


if __name__ == "__main__":
    main()
