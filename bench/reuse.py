"""Vasconcelos et al. (CVPR 2022) re-measured: frozen vs fine-tuned backbone x head capacity.

{frozen, fine-tuned (all stages)} x {light, standard, heavy} heads (detector.config.HEAD_PRESETS),
trained from the same base-class boxes of the synthetic benchmark (train/synthetic.py) with
some base classes made rare (only `--rare-images` training images contain each), on the offline
backbone (ImageNet EfficientNet-Lite0; MiniLM names). Per run: AP, AP50 over the classes with
boxes, novel AP50 (zero-shot transfer to the held-out names), the rare classes' AP, training
images/s (the run's own meter), peak memory (`peak_memory_mb` as `python -m train finetune` logs it: the process's
peak RSS on CPU, `torch.cuda.max_memory_allocated` on CUDA; "of which training" subtracts what a
process holding the same model and text encoder without training peaks at, `python -m train dryrun
--steps 0`) and the inference time per image of the trained model (one thread on CPU). Because the
runs' own speed meters depend on whatever else the machine was doing while each ran, the table
also gives every configuration's training speed measured back to back by `python -m train dryrun`.

Each run is a separate `python -m train finetune --config …` process (the real CLI), so its peak
memory is its own. Runs finished before are reused; processes with different `--seeds` may run
side by side on one `--work` folder, and `--summary` prints the table of every finished run.

    python bench/reuse.py --work runs/reuse                 # CPU default: 3 seeds
    python bench/reuse.py --work runs/reuse --summary
    python bench/reuse.py --work runs/reuse --tags-only --heads light standard --iters 100   # no boxes at all
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.detic_synthetic import experiment_config  # noqa: E402
from detector import OpenVocabDetector, load_checkpoint, save_checkpoint  # noqa: E402
from detector.capacity import parameter_counts, with_choices  # noqa: E402
from detector.config import HEAD_PRESETS  # noqa: E402
from detector.files import atomic_write  # noqa: E402
from detector.predictor import Predictor  # noqa: E402
from train.evaluate import evaluate_model  # noqa: E402
from train.run_config import RunConfig  # noqa: E402
from train.run_dir import RunDir  # noqa: E402
from train.synthetic import BASE, CLASSES, NOVEL, generate  # noqa: E402

RARE = [n for n in BASE if n in ("red circle", "green square", "blue triangle")]
BACKBONES = {"frozen": "frozen", "fine-tuned": "all"}


def seeded_init(path: Path, config, seed: int) -> Path:
    """A checkpoint of `config` with heads initialised from `seed` (written once, then reused)."""
    if not (path / "model.safetensors").exists():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            save_checkpoint(OpenVocabDetector(config), path)
    return path


def rare_subset(data: Path, rare_images: int) -> Path:
    """box_train.json keeping only the first `rare_images` images that contain each rare class
    (images with a rare class beyond those are dropped whole, so no rare object goes unlabelled)."""
    coco = json.loads((data / "box_train.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, set[str]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], set()).add(names[a["category_id"]])
    seen = {n: 0 for n in RARE}
    keep = []
    for im in sorted(coco["images"], key=lambda im: im["id"]):
        rare_here = by_image.get(im["id"], set()) & set(RARE)
        if rare_here and any(seen[n] >= rare_images for n in rare_here):
            continue
        for n in rare_here:
            seen[n] += 1
        keep.append(im)
    ids = {im["id"] for im in keep}
    out = data / f"box_train_rare{rare_images}.json"
    atomic_write(out, json.dumps({**coco, "images": keep,
                                  "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}))
    return out


def run_child(cfg: RunConfig, out: Path) -> None:
    """`python -m train finetune --config` in its own process (so its peak memory is its own)."""
    run = RunDir(out)
    run.write_config(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(out / "bench_stdout.log", "w") as log:
        code = subprocess.call([sys.executable, "-m", "train", "finetune", "--config", str(run.path / "run_config.json")],
                               cwd=Path(__file__).resolve().parents[1], stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0 or run.status().get("state") != "finished":
        sys.exit(f"{out.name} failed: see {out / 'bench_stdout.log'}")


def inference_ms(out: Path, data: Path, n: int = 10) -> float:
    """Median ms per validation image of the trained model (after 3 warm-up images)."""
    model = load_checkpoint(out)
    predictor = Predictor(model)
    val = json.loads((data / "val.json").read_text())["images"][: n + 3]
    times = []
    for i, info in enumerate(val):
        t = time.perf_counter()
        predictor.predict(data / "images" / info["file_name"], CLASSES, score_threshold=0.05)
        if i >= 3:
            times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def measure(out: Path, data: Path) -> dict:
    """Accuracy (evaluated here, not in the run, so the run's memory is training's alone), the
    run's own speed and peak-memory meters, and inference time."""
    run = RunDir(out)
    ev = evaluate_model(load_checkpoint(out), data / "val.json", data / "images", NOVEL)
    metrics = [m for m in run.metrics() if "images_per_s" in m]
    speeds = [m["images_per_s"] for m in metrics if m["iteration"] > 10]
    rare = [ev["per_class"][n] for n in RARE if ev["per_class"].get(n) is not None]
    return {"peak_memory_mb": max(m.get("peak_memory_mb", 0.0) for m in metrics), "AP": ev["base"]["AP"], "AP50": ev["base"]["AP50"], "novel_AP50": ev["novel"]["AP50"],
            "rare_AP": sum(rare) / len(rare) if rare else 0.0, "images_per_s": statistics.mean(speeds),
            "inference_ms": inference_ms(out, data)}


def _dryrun(work: Path, heads: str, backbone: str, steps: int, size: int) -> dict:
    """`python -m train dryrun` for one configuration (cached in --work): with `steps=0` the memory
    of a process holding the model and text encoder but training nothing; otherwise the time per
    box batch (4 images) measured back to back for every configuration, under the same load."""
    cache = work / f"dryrun{steps}_{backbone}_{heads}.json"
    if not cache.exists():
        argv = [sys.executable, "-m", "train", "dryrun", "--model", str(work / "init_seed0"), "--heads", heads,
                "--train-backbone", BACKBONES[backbone], "--box-data", "-", "--box-images", "-",
                "--box-size", str(size), "--box-batch", "4", "--steps", str(steps)]
        out = subprocess.run(argv, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}).stdout
        atomic_write(cache, out[out.index("{"):])
    return json.loads(cache.read_text())


def _inference_back_to_back(work: Path, data: Path, backbone: str, heads: str) -> float:
    """`inference_ms` of the seed-0 model of a configuration, measured in the summary pass (cached),
    so all configurations are timed one after another under the same load."""
    cache = work / f"inference_{backbone}_{heads}.json"
    if not cache.exists():
        atomic_write(cache, json.dumps({"inference_ms": inference_ms(work / f"{backbone}_{heads}_seed0", data)}))
    return json.loads(cache.read_text())["inference_ms"]


def table(rows: list[dict], model_only: dict, step_s: dict, infer_ms: dict) -> str:
    def ms(key, scale=100.0, fmt="{:.1f}"):
        vals = [scale * r[key] for r in sel]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{fmt.format(statistics.mean(vals))} ± {fmt.format(sd)}"

    lines = ["| backbone | heads | head params | AP | AP50 | novel AP50 | rare AP | train img/s (runs) "
             "| train img/s (back to back) | peak memory MB | of which training | inference ms/img (runs) "
             "| inference ms/img (back to back) | seeds |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for backbone in BACKBONES:
        for heads in HEAD_PRESETS:
            sel = [r for r in rows if (r["backbone"], r["heads"]) == (backbone, heads)]
            if sel:
                lines.append(f"| {backbone} | {heads} | {sel[0]['head_params'] / 1e6:.1f} M | {ms('AP')} | {ms('AP50')} "
                             f"| {ms('novel_AP50')} | {ms('rare_AP')} | {ms('images_per_s', 1)} "
                             f"| {4 / step_s[backbone, heads]:.1f} "
                             f"| {ms('peak_memory_mb', 1, '{:.0f}')} "
                             f"| {statistics.mean(r['peak_memory_mb'] for r in sel) - model_only[backbone, heads]:.0f} "
                             f"| {ms('inference_ms', 1, '{:.0f}')} | {infer_ms[backbone, heads]:.0f} | {len(sel)} |")
    return "\n".join(lines)


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def tags_only(args: argparse.Namespace) -> None:
    """The user with tags and no boxes: frozen backbone, new heads of each preset trained from
    image-level labels alone (Detic's loss; selective-search proposals, as the app does before any
    box has trained the RPN), evaluated with boxes on the validation scenes over all 16 classes."""
    data = args.work / "tags_data"
    if not (data / "meta.json").exists():
        generate(data, seed=0, n_box=4, n_label=240, n_val=80, size=args.size)
    base = experiment_config(args.size, False).replace(rpn_trained=False)
    t0 = time.time()
    for seed in args.seeds:
        init = seeded_init(args.work / f"tags_init_seed{seed}", base, seed)
        for heads in args.heads:
            out = args.work / f"tags_{heads}_seed{seed}"
            if (out / "tags_result.json").exists():
                continue
            run_child(RunConfig(model=str(init), heads=heads, label_data=str(data / "image_labels.json"),
                                label_images=str(data / "images"), iters=args.iters, label_batch=8,
                                label_size=args.size // 2, warmup=min(50, args.iters // 10), seed=seed,
                                checkpoint_every=10**9, log_every=10,
                                # as documented: every tag trains, through the whole model each step
                                heldout_share=0.0, tag_features="full"), out)
            ev = evaluate_model(load_checkpoint(out), data / "val.json", data / "images", NOVEL)
            row = {"heads": heads, "seed": seed, "iters": args.iters, "AP": ev["all"]["AP"], "AP50": ev["all"]["AP50"],
                   "novel_AP50": ev["novel"]["AP50"], "base_AP50": ev["base"]["AP50"]}
            atomic_write(out / "tags_result.json", json.dumps(row, indent=2))
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            print(f"[{time.time() - t0:6.0f}s] tags only " + json.dumps(row), flush=True)
    rows = [json.loads(p.read_text()) for p in sorted(args.work.glob("tags_*_seed*/tags_result.json"))]
    print("| heads (frozen backbone, tags only) | AP | AP50 | AP50 per seed | seeds |\n|---|---|---|---|---|")
    for heads in HEAD_PRESETS:
        sel = sorted((r for r in rows if r["heads"] == heads), key=lambda r: r["seed"])
        if sel:
            ap, ap50 = ([100 * r[k] for r in sel] for k in ("AP", "AP50"))
            print(f"| {heads} | {statistics.mean(ap):.1f} ± {_sd(ap):.1f} | {statistics.mean(ap50):.1f} ± {_sd(ap50):.1f} "
                  f"| {' / '.join(f'{v:.1f}' for v in ap50)} | {len(sel)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/reuse"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--heads", nargs="+", default=list(HEAD_PRESETS), choices=list(HEAD_PRESETS))
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    ap.add_argument("--rare-images", type=int, default=4, help="training images that contain each rare class")
    ap.add_argument("--roi-batch", type=int, default=32, help="sampled RoIs per training image")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--summary", action="store_true", help="print the table of every finished run and exit")
    ap.add_argument("--tags-only", action="store_true",
                    help="instead: frozen backbone, each head preset trained from image-level tags alone")
    args = ap.parse_args()
    if args.tags_only:
        tags_only(args)
        return
    data = args.work / "data"
    if not args.summary:
        if not (data / "meta.json").exists():
            generate(data, seed=0, n_box=240, n_label=16, n_val=80, size=args.size)
        box = rare_subset(data, args.rare_images)
        t0 = time.time()
        base = experiment_config(args.size, False).replace(rpn_trained=True, roi_batch_size_per_image=args.roi_batch)
        for seed in args.seeds:
            init = seeded_init(args.work / f"init_seed{seed}", base, seed)
            for backbone in args.backbones:
                choice = BACKBONES[backbone]
                for heads in args.heads:
                    out = args.work / f"{backbone}_{heads}_seed{seed}"
                    if (out / "bench_result.json").exists():
                        continue
                    cfg = RunConfig(model=str(init), heads=heads, train_backbone=choice, box_data=str(box),
                                    box_images=str(data / "images"), iters=args.iters, box_batch=4, box_size=args.size,
                                    warmup=min(50, args.iters // 10), seed=seed, checkpoint_every=10**9, log_every=10)
                    run_child(cfg, out)
                    row = {"backbone": backbone, "heads": heads, "seed": seed, "iters": args.iters,
                           "head_params": parameter_counts(with_choices(base, heads))["heads"], **measure(out, data)}
                    (out / "bench_result.json").write_text(json.dumps(row, indent=2))
                    shutil.rmtree(out / "checkpoints", ignore_errors=True)
                    print(f"[{time.time() - t0:6.0f}s] " + json.dumps(row), flush=True)
    rows = [json.loads(p.read_text()) for p in sorted(args.work.glob("*_seed*/bench_result.json"))]
    configs = sorted({(r["backbone"], r["heads"]) for r in rows})
    model_only = {c: _dryrun(args.work, c[1], c[0], 0, args.size)["peak_memory_mb"] for c in configs}
    step_s = {c: _dryrun(args.work, c[1], c[0], 5, args.size)["seconds_per_iter"]["box"] for c in configs}
    infer_ms = {c: _inference_back_to_back(args.work, data, *c) for c in configs}
    print(table(rows, model_only, step_s, infer_ms))
    print(f"rare classes: {', '.join(RARE)} ({args.rare_images} training images each); "
          f"command: python bench/reuse.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
