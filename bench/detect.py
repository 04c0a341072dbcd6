"""Latency and throughput of `Predictor.predict` next to torchvision's stock Faster R-CNN.

Both run in the same process on the same input: torchvision's `fasterrcnn_resnet50_fpn`
(random weights, 91 classes) is the baseline; the ratio column is ours / baseline time
(< 1 means faster). The image cache is disabled so every call does the full work; a last row
shows the cached path (same image, new vocabulary), which is what the app hits when a person
edits the vocabulary or threshold.

    python bench/detect.py --model offline --size 640 [--device cuda] [--runs 10]
    python bench/detect.py --model coco-clip --region-scoring --same-architecture-offline

`--vs-offline-before` times the model against the pre-issue-14 `offline` model (RPN proposals, no
region scores) on a real 640 px photograph, interleaved in one process.
`--offline-vs-frcnn` (issue 20, target <= 0.25): the packaged `offline` model's full predict on a
real photograph (shorter side 640, 20 names, no image cache) against torchvision's
`fasterrcnn_resnet50_fpn` (v1, random weights) at 640 px on the same photo, interleaved in one
process; nothing else is timed.

    python bench/detect.py --offline-vs-frcnn --runs 5

`--region-scoring` adds the latency of the same model with and without CLIP region scoring.
`--same-architecture-offline` builds the preset's exact architecture with random weights when
its downloads are unavailable (latency does not depend on the weights' values).
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

from detector import Predictor  # noqa: E402
from detector.vocabulary import COCO_CLASSES  # noqa: E402


def timed(fn, runs: int, device: str) -> list[float]:
    times = []
    for _ in range(runs):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def summary(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), float(np.percentile(times, 95))


def offline_vs_frcnn(runs: int, device: str, size: int = 640) -> dict:
    """Median seconds of the offline model's predict and of torchvision's Faster R-CNN R50-FPN
    (v1) on the same 640 px photo, interleaved so a busy machine slows both alike."""
    from PIL import Image
    from skimage import data
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    ours = Predictor.from_pretrained("offline", device=device)
    ours.cache_size = 0
    photo = np.array(Image.fromarray(data.astronaut()).resize((int(size * 4 / 3), size)))
    vocab = ["cat", "dog", "cup", "rocket", "helmet", "space shuttle", "tripod", "person", "flag", "spoon",
             "car", "horse", "bird", "laptop", "chair", "bottle", "clock", "banana", "book", "camera"]
    base = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=size,
                                   max_size=int(size * 4 / 3) + 1).to(device).eval()
    tensor = torch.from_numpy(photo).permute(2, 0, 1).float().div(255).to(device)

    def base_run():
        with torch.inference_mode():
            base([tensor])

    ours.predict(photo, vocab)  # warm-up (embeds the vocabulary once)
    base_run()
    t_ours, t_base = [], []
    for _ in range(runs):
        t_ours += timed(lambda: ours.predict(photo, vocab), 1, device)
        t_base += timed(base_run, 1, device)
    o, b = summary(t_ours), summary(t_base)
    return {"case": "offline predict vs FRCNN R50 v1", "images": 1, "ours_median_s": o[0], "ours_p95_s": o[1],
            "baseline_median_s": b[0], "baseline_p95_s": b[1], "ratio": o[0] / b[0],
            "ours_img_per_s": 1 / o[0], "baseline_img_per_s": 1 / b[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="offline", help="preset, folder or Hub id")
    ap.add_argument("--size", type=int, default=640, help="shorter image side (input resolution)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--test-proposals", type=int, default=None,
                    help="override rpn_post_nms_top_n_test (proposals classified per image)")
    ap.add_argument("--region-scoring", action="store_true", help="also time with vs without CLIP region scores")
    ap.add_argument("--vs-offline-before", action="store_true",
                    help="also time today's pre-issue-14 offline model (RPN proposals, no region scores) on "
                         "the same image, interleaved with ours, and report ours / that")
    ap.add_argument("--same-architecture-offline", action="store_true",
                    help="random weights of the same architecture (no downloads)")
    ap.add_argument("--offline-vs-frcnn", action="store_true",
                    help="only: the offline model vs torchvision's fasterrcnn_resnet50_fpn on a 640 px photo")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.offline_vs_frcnn:
        row = offline_vs_frcnn(args.runs, args.device, args.size)
        dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        print(f"device={dev} photo=astronaut at {args.size}x{int(args.size * 4 / 3)} vocabulary=20 names")
        print(f"offline median/p95 {row['ours_median_s']:.3f}/{row['ours_p95_s']:.3f} s; fasterrcnn_resnet50_fpn "
              f"{row['baseline_median_s']:.3f}/{row['baseline_p95_s']:.3f} s; ratio {row['ratio']:.2f} (target <= 0.25)")
        if args.json:
            args.json.write_text(json.dumps({"device": dev, "rows": [row]}, indent=2))
        return
    rng = np.random.default_rng(0)
    h, w = args.size, int(args.size * 4 / 3)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(args.batch)]
    vocab = list(COCO_CLASSES)

    if args.same_architecture_offline:
        from detector import OpenVocabDetector
        from detector.presets import PRESETS

        cfg = PRESETS[args.model]
        options = dict(cfg.text_encoder_options)
        if "pretrained" in options:
            options["pretrained"] = ""
        ours = Predictor(OpenVocabDetector(cfg.replace(init_weights="", backbone_weights="none",
                                                       text_encoder_options=options)), device=args.device)
    else:
        ours = Predictor.from_pretrained(args.model, device=args.device)
    ours.model.config.min_size, ours.model.config.max_size = args.size, int(args.size * 4 / 3) + 1
    ours.model.transform.min_size, ours.model.transform.max_size = (args.size,), int(args.size * 4 / 3) + 1
    if args.test_proposals:
        ours.model.config.rpn_post_nms_top_n_test = args.test_proposals
        ours.model.rpn._post_nms_top_n["testing"] = args.test_proposals
    ours.cache_size = 0
    ours.clear_cache()

    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    base = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                   min_size=args.size, max_size=int(args.size * 4 / 3) + 1).to(args.device).eval()
    tensors = [torch.from_numpy(im).permute(2, 0, 1).float().div(255).to(args.device) for im in images]

    def base_run(batch):
        with torch.inference_mode():
            if args.device == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    base(batch)
            else:
                base(batch)

    ours.predict(images[:2], vocab)  # warm-up (also embeds the vocabulary once)
    base_run(tensors[:2])
    rows = []
    for label, ours_fn, base_fn, n in [
        ("batch 1 latency", lambda: ours.predict(images[0], vocab), lambda: base_run(tensors[:1]), 1),
        (f"batch {args.batch} per call", lambda: ours.predict(images, vocab, batch_size=args.batch),
         lambda: base_run(tensors), args.batch),
    ]:
        runs = args.runs if n == 1 else max(3, args.runs // 3)
        o, b = summary(timed(ours_fn, runs, args.device)), summary(timed(base_fn, runs, args.device))
        rows.append({"case": label, "images": n, "ours_median_s": o[0], "ours_p95_s": o[1],
                     "baseline_median_s": b[0], "baseline_p95_s": b[1], "ratio": o[0] / b[0],
                     "ours_img_per_s": n / o[0], "baseline_img_per_s": n / b[0]})
    ours.cache_size = 8
    ours.predict(images[0], vocab)
    cached = summary(timed(lambda: ours.predict(images[0], vocab[::-1]), args.runs, args.device))
    rows.append({"case": "cached image, new vocabulary", "images": 1, "ours_median_s": cached[0],
                 "ours_p95_s": cached[1], "baseline_median_s": None, "baseline_p95_s": None, "ratio": None,
                 "ours_img_per_s": 1 / cached[0], "baseline_img_per_s": None})

    if args.region_scoring and ours.region_scorer is not None:
        scorer = ours.region_scorer
        for label, on in (("region scoring on", True), ("region scoring off", False)):
            ours.region_scorer = scorer if on else None
            ours.cache_size = 0
            ours.clear_cache()
            t = summary(timed(lambda: ours.predict(images[0], vocab), max(3, args.runs // 2), args.device))
            rows.append({"case": f"batch 1, {label}", "images": 1, "ours_median_s": t[0], "ours_p95_s": t[1],
                         "baseline_median_s": None, "baseline_p95_s": None, "ratio": None,
                         "ours_img_per_s": 1 / t[0], "baseline_img_per_s": None})
        ours.region_scorer = scorer

    if args.vs_offline_before:
        from detector import OpenVocabDetector
        from detector.presets import PRESETS

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            old_cfg = PRESETS["offline"].replace(rpn_trained=True, region_scoring=False, part_suppression=0.0,
                                                 min_size=args.size, max_size=int(args.size * 4 / 3) + 1)
            before = Predictor(OpenVocabDetector(old_cfg), device=args.device)
        from PIL import Image
        from skimage import data

        # A real photograph: selective search finds few regions in random noise.
        photo = np.array(Image.fromarray(data.astronaut()).resize((w, h)))
        before.cache_size = ours.cache_size = 0
        before.predict(photo, vocab)
        t_ours, t_before = [], []
        for _ in range(args.runs):  # interleaved, so a busy machine slows both alike
            t_ours += timed(lambda: ours.predict(photo, vocab), 1, args.device)
            t_before += timed(lambda: before.predict(photo, vocab), 1, args.device)
        o, b = summary(t_ours), summary(t_before)
        rows.append({"case": "batch 1 vs offline before", "images": 1, "ours_median_s": o[0], "ours_p95_s": o[1],
                     "baseline_median_s": b[0], "baseline_p95_s": b[1], "ratio": o[0] / b[0],
                     "ours_img_per_s": 1 / o[0], "baseline_img_per_s": 1 / b[0]})

    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model={args.model} backbone={ours.config.backbone} input={h}x{w} device={dev} vocabulary=80 names "
          f"test proposals={ours.config.rpn_post_nms_top_n_test}")
    print(f"{'case':32s} {'ours med/p95 (s)':>20s} {'baseline med/p95 (s)':>22s} {'ratio':>7s} {'ours img/s':>10s}")
    for r in rows:
        b = f"{r['baseline_median_s']:.4f}/{r['baseline_p95_s']:.4f}" if r["baseline_median_s"] else "-"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
        print(f"{r['case']:32s} {r['ours_median_s']:.4f}/{r['ours_p95_s']:.4f}".ljust(54)
              + f"{b:>22s} {ratio:>7s} {r['ours_img_per_s']:10.2f}")
    if args.json:
        args.json.write_text(json.dumps({"device": dev, "model": args.model, "size": args.size, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
