"""`Predictor.predict` next to torchvision's Faster R-CNN of the same architecture, in one process.

The baseline is torchvision's model of the same architecture with random weights: for `coco-clip`
(ResNet-50 FPN v2 localisation) `fasterrcnn_resnet50_fpn_v2`, for the other presets the v1
`fasterrcnn_resnet50_fpn`. Both are timed from the same uint8 numpy images to results on the host
(the conversion to a float tensor on the device, and the copy of the outputs back, are inside the
timing of both), both classify the same number of test proposals, and on CUDA both run bf16
autocast + channels_last. The image cache is off except in the "cached image" row.

    python bench/detect.py --model coco-clip --same-architecture-offline --size 800 --batch 8
    python bench/detect.py --model offline --size 640 --runs 7 --batch 2
    python bench/detect.py --model coco-clip --same-architecture-offline --size 320 --ops --batch 4

`--same-architecture-offline` builds the preset's architecture with random weights (no downloads;
latency does not depend on the weights' values) and, as `load_detector` does once the COCO weights
are loaded, takes the trained-RPN path (RPN proposals, box regression, objectness product).
`--ops` prints, for batch 1..`--batch`, the top-level aten ops and host-sync ops of one predict
for both models with region scoring on and off (`bench/op_counts.py` says how they are counted);
the counts are the same on every device.
`--offline-vs-frcnn` (issue 20, target <= 0.25): the packaged `offline` model's full predict on a
real photograph (shorter side 640, 20 names, no image cache) against torchvision's
`fasterrcnn_resnet50_fpn` (v1, random weights) at 640 px on the same photo, interleaved in one
process; nothing else is timed.

    python bench/detect.py --offline-vs-frcnn --runs 5

"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.op_counts import count_ops  # noqa: E402
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


def build_ours(args) -> Predictor:
    from detector import OpenVocabDetector
    from detector.presets import PRESETS, resolve_source

    size = dict(min_size=args.size, max_size=int(args.size * 4 / 3) + 1)
    if not args.same_architecture_offline:
        return Predictor.from_pretrained(args.model, device=args.device).at_size(**size)
    cfg = PRESETS[args.model] if args.model in PRESETS else resolve_source(args.model)[1]
    options = dict(cfg.text_encoder_options)
    if "pretrained" in options:
        options["pretrained"] = ""
    # what load_detector sets once COCO weights are in: the trained-RPN path
    rpn_trained = cfg.rpn_trained or cfg.init_weights == "torchvision_coco_frcnn_v2"
    cfg = cfg.replace(init_weights="", backbone_weights="none", text_encoder_options=options,
                      rpn_trained=rpn_trained, **size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Predictor(OpenVocabDetector(cfg), device=args.device)


def build_baseline(args, ours: Predictor):
    """torchvision's model of `ours`' architecture: v2 for FPN-v2 localisation, else v1."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2

    cfg = ours.config
    v2 = cfg.init_weights == "torchvision_coco_frcnn_v2" or args.model == "coco-clip"
    make = fasterrcnn_resnet50_fpn_v2 if v2 else fasterrcnn_resnet50_fpn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = make(weights=None, weights_backbone=None, num_classes=91, min_size=cfg.min_size,
                    max_size=cfg.max_size, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
                    rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
                    box_detections_per_img=cfg.max_detections).to(args.device).eval()
    if args.device == "cuda":
        base = base.to(memory_format=torch.channels_last)
    return base, ("fasterrcnn_resnet50_fpn_v2" if v2 else "fasterrcnn_resnet50_fpn")


def baseline_runner(base, device: str):
    """uint8 numpy images -> torchvision outputs on the host (conversion inside, as for ours)."""
    def run(images: list[np.ndarray]):
        with torch.inference_mode():
            tensors = [torch.from_numpy(im).to(device).permute(2, 0, 1).float().div_(255) for im in images]
            if device == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = base(tensors)
            else:
                out = base(tensors)
            return [{k: v.float().cpu() for k, v in o.items()} for o in out]
    return run


def row(case, n, o, b=None) -> dict:
    return {"case": case, "images": n, "ours_median_s": o[0], "ours_p95_s": o[1],
            "baseline_median_s": b[0] if b else None, "baseline_p95_s": b[1] if b else None,
            "ratio": o[0] / b[0] if b else None, "ours_img_per_s": n / o[0],
            "baseline_img_per_s": n / b[0] if b else None}


def peak_memory(fn, device: str) -> float | None:
    """Peak CUDA memory (GiB) of one call; None on CPU (no per-call allocator statistics there)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def timing_rows(args, ours: Predictor, base_run, images, vocab) -> list[dict]:
    rows, b1 = [], images[:1]
    scorer = ours.region_scorer
    settings = [("on", scorer), ("off", None)] if scorer is not None else [("none", None)]
    for label, sc in settings:
        ours.region_scorer = sc
        ours.predict(images[:2], vocab)  # warm-up
        o, b = [], []
        for _ in range(args.runs):  # interleaved, so a busy machine slows both alike
            o += timed(lambda: ours.predict(b1, vocab), 1, args.device)
            b += timed(lambda: base_run(b1), 1, args.device)
        rows.append(row(f"batch 1, region scoring {label}", 1, summary(o), summary(b)))
        n = len(images)
        o, b = [], []
        for _ in range(max(2, args.runs // 3)):
            o += timed(lambda n=n: ours.predict(images, vocab, batch_size=n), 1, args.device)
            b += timed(lambda: base_run(images), 1, args.device)
        r = row(f"batch {n}, region scoring {label}", n, summary(o), summary(b))
        r["ours_peak_gib"] = peak_memory(lambda n=n: ours.predict(images, vocab, batch_size=n), args.device)
        r["baseline_peak_gib"] = peak_memory(lambda: base_run(images), args.device)
        rows.append(r)
    ours.region_scorer = scorer
    return rows


def vocabulary_rows(args, ours: Predictor, image, vocab) -> list[dict]:
    """A cached image under a new vocabulary, and 1,000 names never seen (text encoder included)."""
    from detector.embedding_cache import EmbeddingCache, VocabularyEmbedder

    ours.cache_size = 8
    ours.predict(image, vocab)
    rows = [row("cached image, new vocabulary", 1,
                summary(timed(lambda: ours.predict(image, vocab[::-1]), args.runs, args.device)))]
    shared = ours.embedder
    with tempfile.TemporaryDirectory() as tmp:  # a throw-away embedding cache: the names are new every run
        ours.embedder = VocabularyEmbedder(shared.encoder, shared.prompt, EmbeddingCache(Path(tmp) / "e.sqlite"))
        times = []
        for run in range(max(2, args.runs // 3)):
            names = [f"thing {run}-{i}" for i in range(1000)]
            times += timed(lambda names=names: ours.predict(image, names), 1, args.device)
        ours.embedder = shared
    rows.append(row("cached image, 1,000 new names", 1, summary(times)))
    ours.cache_size = 0
    return rows


def ops_rows(args, ours: Predictor, base_run, images, vocab) -> list[dict]:
    """Top-level aten ops and host syncs of one predict, batch 1..N, region scoring on/off."""
    out, scorer = [], ours.region_scorer
    for label, sc in ([("on", scorer), ("off", None)] if scorer is not None else [("none", None)]):
        ours.region_scorer = sc
        ours.predict(images[:1], vocab)
        for n in range(1, len(images) + 1):
            o = count_ops(lambda n=n: ours.predict(images[:n], vocab, batch_size=n))
            b = count_ops(lambda n=n: base_run(images[:n]))
            out.append({"region_scoring": label, "batch": n, "ours_ops": o["top_level"], "ours_syncs": o["syncs"],
                        "baseline_ops": b["top_level"], "baseline_syncs": b["syncs"],
                        "ours_sync_ops": {k: o[k] for k in ("aten::item", "aten::_local_scalar_dense",
                                                            "aten::nonzero", "aten::is_nonzero")},
                        "baseline_sync_ops": {k: b[k] for k in ("aten::item", "aten::_local_scalar_dense",
                                                                "aten::nonzero", "aten::is_nonzero")}})
    ours.region_scorer = scorer
    return out


def print_ops(rows: list[dict]) -> None:
    print(f"{'region scoring':>14s} {'batch':>5s} {'ours ops':>9s} {'tv ops':>7s} {'ratio':>6s} "
          f"{'ours syncs':>10s} {'tv syncs':>8s}")
    for r in rows:
        print(f"{r['region_scoring']:>14s} {r['batch']:5d} {r['ours_ops']:9d} {r['baseline_ops']:7d} "
              f"{r['ours_ops'] / r['baseline_ops']:6.2f} {r['ours_syncs']:10d} {r['baseline_syncs']:8d}")
    for label in dict.fromkeys(r["region_scoring"] for r in rows):
        sel = [r for r in rows if r["region_scoring"] == label]
        if len(sel) > 1:
            x = [r["batch"] for r in sel]
            fo, fb = np.polyfit(x, [r["ours_ops"] for r in sel], 1), np.polyfit(x, [r["baseline_ops"] for r in sel], 1)
            print(f"fit (region scoring {label}): ours {fo[1]:.0f} + {fo[0]:.0f}·B, torchvision {fb[1]:.0f} + "
                  f"{fb[0]:.0f}·B; per-image growth ratio {fo[0] / fb[0]:.2f}")


def print_rows(rows: list[dict]) -> None:
    print(f"{'case':34s} {'ours p50/p95 (s)':>18s} {'baseline p50/p95 (s)':>22s} {'ratio':>6s} "
          f"{'ours img/s':>10s} {'base img/s':>10s} {'peak GiB o/b':>13s}")
    for r in rows:
        b = f"{r['baseline_median_s']:.4f}/{r['baseline_p95_s']:.4f}" if r["baseline_median_s"] else "-"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
        bi = f"{r['baseline_img_per_s']:.2f}" if r["baseline_img_per_s"] else "-"
        mem = (f"{r['ours_peak_gib']:.2f}/{r['baseline_peak_gib']:.2f}" if r.get("ours_peak_gib") is not None
               else "-")
        print(f"{r['case']:34s} {r['ours_median_s']:.4f}/{r['ours_p95_s']:.4f}".ljust(53)
              + f"{b:>22s} {ratio:>6s} {r['ours_img_per_s']:10.2f} {bi:>10s} {mem:>13s}")


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
    run_base = baseline_runner(base, device)  # from the uint8 photo to host results, as ours

    def base_run():
        run_base([photo])

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
                    help="proposals classified per image, for both models (default: ours' config)")
    ap.add_argument("--same-architecture-offline", action="store_true",
                    help="random weights of the same architecture, trained-RPN path (no downloads)")
    ap.add_argument("--ops", action="store_true", help="print op and host-sync counts instead of timings")
    ap.add_argument("--offline-vs-frcnn", action="store_true",
                    help="only: the offline model vs torchvision's fasterrcnn_resnet50_fpn on a 640 px photo")
    args = ap.parse_args()
    if args.offline_vs_frcnn:
        row = offline_vs_frcnn(args.runs, args.device, args.size)
        dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        print(f"device={dev} photo=astronaut at {args.size}x{int(args.size * 4 / 3)} vocabulary=20 names")
        print(f"offline median/p95 {row['ours_median_s']:.3f}/{row['ours_p95_s']:.3f} s; fasterrcnn_resnet50_fpn "
              f"{row['baseline_median_s']:.3f}/{row['baseline_p95_s']:.3f} s; ratio {row['ratio']:.2f} (target <= 0.25)")
        if args.json:
            args.json.write_text(json.dumps({"device": dev, "rows": [row]}, indent=2))
        return
    ours = build_ours(args)
    if args.test_proposals:
        ours.model.config = ours.model.config.replace(rpn_post_nms_top_n_test=args.test_proposals)
        ours.model.rpn._post_nms_top_n["testing"] = args.test_proposals
    ours.cache_size = 0
    ours.clear_cache()
    base, base_name = build_baseline(args, ours)
    base_run = baseline_runner(base, args.device)
    rng = np.random.default_rng(0)
    h, w = args.size, int(args.size * 4 / 3)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(args.batch)]
    vocab = list(COCO_CLASSES)
    base_run(images[:1])
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model={args.model} backbone={ours.config.backbone} baseline={base_name} input={h}x{w} device={dev} "
          f"vocabulary=80 names test proposals={ours.config.rpn_post_nms_top_n_test} "
          f"proposals={'selective search' if ours.model.uses_selective_search else 'RPN'}")
    if args.ops:
        rows = ops_rows(args, ours, base_run, images, vocab)
        print_ops(rows)
    else:
        rows = timing_rows(args, ours, base_run, images, vocab) + vocabulary_rows(args, ours, images[0], vocab)
        print_rows(rows)
    if args.json:
        args.json.write_text(json.dumps({"device": dev, "model": args.model, "baseline": base_name,
                                         "size": args.size, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
