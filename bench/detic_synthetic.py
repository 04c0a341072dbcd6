"""Detic's main claim, re-measured on the synthetic open-vocabulary benchmarks.

Protocol (Detic's): per seed, a box-supervised model is trained first (phase 1, base-class
boxes only); every variant then continues from that same checkpoint for the same number of
iterations (phase 2):
  (a) box-supervised only (continues with base-class boxes)
  (b) + image labels, max_size   (Detic's default; scope box_head, as Detic)
  (c) + image labels, image_box
  (d) + image labels, max_score
  (*_classifier) the same rule with scope "classifier" (only the classifier learns from labels)
Benchmarks: `simple` (train/synthetic.py: novel names compose from base names) and `hard`
(bench/hard_synthetic.py: novel shapes / unrelated names, clutter, multi-object label images).
Model: the real offline weights — EfficientNet-Lite0 (ImageNet, frozen) + all-MiniLM-L6-v2 text
embeddings — with heads sized for a CPU run. Reports novel and base AP50 (mean ± std over seeds).

    python bench/detic_synthetic.py                    # CPU default: both benchmarks, every rule and scope, 1 seed
    python bench/detic_synthetic.py --benchmark hard --seeds 0 1 2   # one benchmark, the documented 3 seeds
    python bench/detic_synthetic.py --large            # more data / iterations / resolution, for a GPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import hard_synthetic  # noqa: E402
from detector import OpenVocabDetector, load_checkpoint, save_checkpoint  # noqa: E402
from detector.embedding_cache import VocabularyEmbedder  # noqa: E402
from detector.presets import PRESETS  # noqa: E402
from train import synthetic  # noqa: E402
from train.evaluate import evaluate_model  # noqa: E402
from train.finetune import finetune  # noqa: E402
from train.run_config import RunConfig  # noqa: E402
from train.run_dir import RunDir  # noqa: E402

BENCHMARKS = {"simple": synthetic, "hard": hard_synthetic}
# variant -> (rule, scope); None: box labels only; "half": box only with half the iterations
VARIANTS = {"a_box_only": None, "b_max_size": ("max_size", "box_head"), "c_image_box": ("image_box", "box_head"),
            "d_max_score": ("max_score", "box_head"), "b_max_size_classifier": ("max_size", "classifier"),
            "c_image_box_classifier": ("image_box", "classifier"),
            "d_max_score_classifier": ("max_score", "classifier"),
            # control: box-only with as many box batches as (b)-(d) get at ratio 1:1 (half the iterations)
            "a2_box_only_half": "half"}
# every rule under both scopes, box-only, and the equal-box-batch control
DEFAULT_VARIANTS = ["a_box_only", "a2_box_only_half", "b_max_size", "c_image_box", "d_max_score",
                    "b_max_size_classifier", "c_image_box_classifier", "d_max_score_classifier"]


def experiment_config(size: int, large: bool, text: str = "minilm"):
    """The offline preset with lighter heads (CPU budget), inputs sized to the data, and the
    detector's head alone scoring (no region-score ensemble).
    `text="hashed"` swaps the names' embeddings for structure-free random vectors (a control)."""
    text_options = {} if text == "minilm" else {"text_encoder": "hashed", "embed_dim": 64,
                                                 "text_encoder_options": {"dim": 64}}
    return PRESETS["offline"].replace(
        **text_options,
        fpn_channels=256 if large else 128, box_head_convs=4 if large else 1,
        representation_size=1024 if large else 256, min_size=size, max_size=int(size * 1.67),
        anchor_sizes=(16, 32, 64, 128, 256), rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=200, roi_batch_size_per_image=128,
        image_label_num_proposals=128,
        # the detector's own head is what is measured: no ImageNet region-score ensemble, no part
        # suppression (the offline preset turns both on for its first launch, docs/offline_zero_shot.md)
        region_scoring=False, part_suppression=0.0,
    )


def scores(run_dir: str, data: Path, novel: list[str], detic_scoring: bool = True) -> dict[str, float]:
    """AP of a run's checkpoint on the validation set, scoring detections by Detic's
    sqrt(class score * objectness) or (`detic_scoring=False`) by the class score alone."""
    model = load_checkpoint(run_dir)
    model.config = model.config.replace(mult_proposal_score=detic_scoring)
    embedder = VocabularyEmbedder.for_config(model.config)
    ev = evaluate_model(model, data / "val.json", data / "images", novel, embedder=embedder)
    return {"novel_AP50": ev["novel"]["AP50"], "base_AP50": ev["base"]["AP50"], "novel_AP": ev["novel"]["AP"],
            "base_AP": ev["base"]["AP"], "all_AP50": ev["all"]["AP50"]}


def _finished_with(out: Path, cfg: RunConfig) -> bool:
    """Whether `out` holds a finished run of exactly `cfg` (so a re-run only re-scores it)."""
    run = RunDir(out)
    try:
        return run.status().get("state") == "finished" and run.read_config() == cfg
    except (OSError, ValueError):
        return False


def markdown_table(results: dict[str, list[dict]]) -> str:
    """Mean ± std over seeds, and the per-seed novel AP50 (to see whether every seed moved)."""
    def ms(rows, key):
        vals = [100 * r[key] for r in rows]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.1f} ± {sd:.1f}"

    lines = ["| variant | novel AP50 | base AP50 | novel AP | base AP | novel AP50 per seed "
             "| plain scores: novel / base AP50 |", "|---|---|---|---|---|---|---|"]
    for variant, rows in results.items():
        rows = sorted(rows, key=lambda r: r["seed"])
        per_seed = " / ".join(f"{100 * r['novel_AP50']:.1f}" for r in rows)
        plain = [r["plain_scores"] for r in rows if "plain_scores" in r]
        plain = f"{ms(plain, 'novel_AP50')} / {ms(plain, 'base_AP50')}" if len(plain) == len(rows) else "–"
        lines.append(f"| {variant} | {ms(rows, 'novel_AP50')} | {ms(rows, 'base_AP50')} | {ms(rows, 'novel_AP')} "
                     f"| {ms(rows, 'base_AP')} | {per_seed} | {plain} |")
    return "\n".join(lines)


def both(args: argparse.Namespace) -> None:
    """Both benchmarks at once, one process each (half the machine's threads each), same flags."""
    import os
    import subprocess

    argv, skip = [], False
    for a in sys.argv[1:]:  # this command line minus --work / --benchmark
        if skip:
            skip = False
        elif a in ("--work", "--benchmark"):
            skip = True
        elif not a.startswith(("--work=", "--benchmark=")):
            argv.append(a)
    threads = str(max(1, (os.cpu_count() or 2) // 2))
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, __file__, "--benchmark", name, "--work", str(args.work / name), *argv],
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)})
             for name in BENCHMARKS]
    codes = [p.wait() for p in procs]
    if any(codes):
        sys.exit(f"a benchmark process failed (exit codes {codes})")
    if not args.summary:
        print(f"both benchmarks: {time.time() - t0:.0f} s wall")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/detic_synthetic"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="the tables in docs/experiments.md use 0 1 2")
    ap.add_argument("--iters", type=int, default=None, help="phase-2 iterations per variant")
    ap.add_argument("--box-iters", type=int, default=None, help="phase-1 (box-supervised) iterations")
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--large", action="store_true", help="GPU setting: more data, iterations, resolution, heads")
    ap.add_argument("--benchmark", choices=[*BENCHMARKS, "both"], default="both",
                    help="both: each benchmark in its own process, side by side, under --work/<benchmark>")
    ap.add_argument("--image-loss-weight", type=float, default=0.1)
    ap.add_argument("--ratio", default="1:1", help="box : image-label batches in phase 2")
    ap.add_argument("--label-scale", type=float, default=0.5,
                    help="image-labelled images' resolution relative to box images (Detic: 0.5)")
    ap.add_argument("--tag", default="", help="suffix for the variants' names (settings sweeps in one --work)")
    ap.add_argument("--lr", type=float, default=2e-4, help="Detic's AdamW learning rate (see docs/experiments.md)")
    ap.add_argument("--markdown", type=Path, default=None, help="write the result table here")
    ap.add_argument("--text", choices=["minilm", "hashed"], default="minilm",
                    help="names' embeddings: real MiniLM, or structure-free hashed vectors (control)")
    ap.add_argument("--summary", action="store_true", help="print the table of --work/results.json and exit")
    ap.add_argument("--rescore", action="store_true",
                    help="score finished runs found in --work as they are, whatever settings they were made with")
    args = ap.parse_args()
    if args.benchmark == "both":
        both(args)
        return
    if args.summary:
        print(markdown_table(json.loads((args.work / "results.json").read_text())))
        return
    size = 320 if args.large else 128
    cpu_box_iters, cpu_iters = (300, 100) if args.benchmark == "hard" else (150, 120)
    iters = args.iters or (3000 if args.large else cpu_iters)
    box_iters = args.box_iters or (3000 if args.large else cpu_box_iters)
    data = args.work / "data"
    bench = BENCHMARKS[args.benchmark]
    if not (data / "meta.json").exists():
        bench.generate(data, seed=0, n_box=1000 if args.large else 240, n_label=1000 if args.large else 240,
                 n_val=200 if args.large else 80, size=size)
    results: dict[str, list[dict]] = {v + args.tag: [] for v in args.variants}
    t0 = time.time()
    for seed in args.seeds:
        init = args.work / f"init_seed{seed}"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            save_checkpoint(OpenVocabDetector(experiment_config(size, args.large, args.text)), init)
        common = dict(box_data=str(data / "box_train.json"), box_images=str(data / "images"),
                      box_batch=8 if args.large else 4, label_batch=16 if args.large else 8,
                      box_size=size, label_size=int(size * args.label_scale), image_label_weight=args.image_loss_weight,
                      lr=args.lr,
                      checkpoint_every=10**9, log_every=25, seed=seed)
        phase1 = args.work / f"phase1_box_seed{seed}"
        if RunDir(phase1).status().get("state") != "finished":
            shutil.rmtree(phase1, ignore_errors=True)
            if finetune(RunConfig(model=str(init), iters=box_iters, warmup=min(50, box_iters // 10), **common),
                        phase1)["state"] != "finished":
                sys.exit("phase 1 stopped; re-run to redo it")
        for variant in args.variants:
            spec = VARIANTS[variant]
            half = spec == "half"
            rule, scope = spec if isinstance(spec, tuple) else (None, "box_head")
            out = args.work / f"{variant}{args.tag}_seed{seed}"
            cfg = RunConfig(
                model=str(phase1), iters=iters // 2 if half else iters,
                label_data=str(data / "image_labels.json") if rule else None,
                label_images=str(data / "images") if rule else None, image_label_rule=rule or "max_size",
                image_label_scope=scope, ratio=args.ratio,
                warmup=min(20, iters // 10), heldout_share=0.0, **common,  # its own val set scores it
            )
            if _finished_with(out, cfg) or (args.rescore and RunDir(out).status().get("state") == "finished"):
                # done before (with the same settings, or as it is with --rescore): score it, do not retrain
                result = RunDir(out).summary()
            else:
                shutil.rmtree(out, ignore_errors=True)
                result = finetune(cfg, out)
            if result["state"] != "finished":  # Ctrl-C / SIGTERM: the run stopped cleanly; so do we
                sys.exit(f"{variant} seed {seed} stopped at iteration {result['iteration']}; re-run to redo it")
            row = {"seed": seed, **scores(out, data, bench.NOVEL), "box_iters": box_iters, "iters": cfg.iters,
                   "ratio": args.ratio, "label_size": cfg.label_size,
                   "image_stats": {k: v for k, v in result.get("last", {}).items() if k.startswith("stats_")},
                   "plain_scores": scores(out, data, bench.NOVEL, detic_scoring=False)}
            results[variant + args.tag].append(row)
            print(f"[{time.time() - t0:7.0f}s] {variant}{args.tag} seed {seed}: " + json.dumps(row), flush=True)

    table = markdown_table(results)
    cmd = "python bench/detic_synthetic.py " + " ".join(sys.argv[1:])
    print(table)
    print(f"({len(args.seeds)} seeds, {box_iters} box-only + {iters} iterations per variant, "
          f"{time.time() - t0:.0f} s total; command: {cmd})")
    merged = json.loads((args.work / "results.json").read_text()) if (args.work / "results.json").exists() else {}
    for variant, rows in results.items():  # runs of other variants / seeds in the same --work are kept
        seeds = {r["seed"] for r in rows}
        merged[variant] = [r for r in merged.get(variant, []) if r["seed"] not in seeds] + rows
    (args.work / "results.json").write_text(json.dumps(merged, indent=2))
    if args.markdown:
        args.markdown.write_text(table + f"\n\n{len(args.seeds)} seeds; phase 1 {box_iters} box-only iterations, "
                                 f"phase 2 {iters} iterations per variant; "
                                 f"{time.time() - t0:.0f} s total. Command: `{cmd.strip()}`\n")


if __name__ == "__main__":
    main()
