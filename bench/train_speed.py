"""What one retraining step costs, next to one inference of torchvision's stock Faster R-CNN.

Everything runs in one process on this machine: the baseline is torchvision's
`fasterrcnn_resnet50_fpn` (random weights; the cost does not depend on their values) on a real
640 x 427 photograph (scikit-image's chelsea, resized); then `train.dry_run` measures the run the
Train tab starts by default on this device (tags only, the served `offline` model, 320 px tag
images, batches of 8, 300 iterations) — with cached features (the default) and, for comparison,
with the full Detic path (`--tag-features full`: every step runs the whole model).

Reported per path: seconds per tag iteration, its ratio to one baseline inference, the one-off
cost per tagged image (caching) and per held-out image (scoring), and the default run's estimated
total for `--tagged` tagged images (of which a fifth are held out).

    python bench/train_speed.py [--device cpu] [--tagged 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.dry_run import dry_run  # noqa: E402
from train.heldout import HELDOUT_SHARE  # noqa: E402
from train.run_config import RunConfig  # noqa: E402


def baseline_seconds(device: torch.device, runs: int) -> float:
    """Median seconds of one `fasterrcnn_resnet50_fpn` inference on a 640 x 427 photo."""
    from PIL import Image
    from skimage import data
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    photo = np.asarray(Image.fromarray(data.chelsea()).resize((640, 427)))
    x = torch.from_numpy(photo).permute(2, 0, 1).float().div(255).to(device)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=427, max_size=640).eval().to(device)
    times = []
    with torch.inference_mode():
        for i in range(runs + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            model([x])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="offline")
    ap.add_argument("--tagged", type=int, default=50, help="tagged images of the estimated run")
    ap.add_argument("--iters", type=int, default=300, help="the Train tab's default run length")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    base = baseline_seconds(device, args.runs)
    held = max(1, round(HELDOUT_SHARE * args.tagged))
    rows = {}
    for path in ("cached", "full"):
        cfg = RunConfig(model=args.model, label_data="(tags)", label_images=".", iters=args.iters,
                        device=str(device), tag_features=path)
        r = dry_run(cfg, steps=args.steps)
        step = r["seconds_per_iter"]["label"]
        per_image = r.get("seconds_per_image") or {}
        once = per_image.get("cache", 0.0) * (args.tagged - held) + per_image.get("heldout", 0.0) * held
        rows[path] = {"seconds_per_iter": step, "ratio_to_baseline": step / base, "seconds_per_image": per_image,
                      "estimated_run_s": step * args.iters + once, "trainable_params": r["trainable_params"],
                      "peak_memory_mb": r["peak_memory_mb"]}
    print(f"baseline: torchvision fasterrcnn_resnet50_fpn, one 640 x 427 inference on {device}: {base:.3f} s\n")
    print("| tag path | s / iteration | × baseline | s / tagged image (once) | s / held-out image (once) | "
          f"default run ({args.tagged} tagged, {args.iters} it) |")
    print("|---|---|---|---|---|---|")
    for path, r in rows.items():
        pi = r["seconds_per_image"]
        once = "–" if not pi else f"{pi['cache']:.2f}"
        held_once = "–" if not pi else f"{pi['heldout']:.2f}"
        print(f"| {path} | {r['seconds_per_iter']:.3f} | {r['ratio_to_baseline']:.2f} | {once} | {held_once} | "
              f"{r['estimated_run_s'] / 60:.1f} min |")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "baseline_s": base, "paths": rows}, indent=2))


if __name__ == "__main__":
    main()
