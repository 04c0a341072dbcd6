"""AlignDet's claim, re-measured on the synthetic benchmark: pre-training the heads on unlabelled
images helps most when few boxes are labelled and the schedule is short.

Protocol, per seed:
  (a) preset: the offline model (ImageNet EfficientNet-Lite0, frozen; random neck / RPN / heads,
      sized for a CPU run as in bench/detic_synthetic.py), fine-tuned from boxes;
  (b) aligndet: the same model after `train.pretrain` on the benchmark's unlabelled images (the
      box-train and image-label images with their labels ignored), fine-tuned the same way;
  (c) aligndet + AlignDet's fine-tuning recipe (lr x1.5, weight decay x0.5), with --recipe.
Fine-tuning uses 5 %, 10 % and 100 % of the box-labelled images (a fixed random subset per seed),
box labels only, short and (with --normal) normal schedules. Reports box AP / AP50 on the
validation scenes over the classes that have boxes (mean ± std over seeds), and wall times.

    python bench/aligndet_synthetic.py                          # CPU: 1 seed, short schedule
    python bench/aligndet_synthetic.py --seeds 0 1 2 --normal   # the full protocol (GPU)
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.detic_synthetic import experiment_config  # noqa: E402
from detector import OpenVocabDetector, save_checkpoint  # noqa: E402
from train.finetune import finetune  # noqa: E402
from train.pretrain import pretrain  # noqa: E402
from train.run_config import PretrainConfig, RunConfig  # noqa: E402
from train.run_dir import RunDir  # noqa: E402
from train.synthetic import BASE, NOVEL, generate  # noqa: E402


def subset(data: Path, fraction: float, seed: int, out: Path) -> Path:
    """A COCO file with `fraction` of the box-train images (at least 2), fixed per seed."""
    coco = json.loads((data / "box_train.json").read_text())
    images = sorted(coco["images"], key=lambda im: im["id"])
    keep = random.Random(f"subset/{seed}").sample(images, max(2, round(fraction * len(images))))
    ids = {im["id"] for im in keep}
    out.write_text(json.dumps({**coco, "images": keep, "annotations": [a for a in coco["annotations"]
                                                                         if a["image_id"] in ids]}))
    return out


def _finetune(model, box, data, iters, size, lr, wd, seed, out) -> tuple[dict, float]:
    t = time.time()
    result = finetune(RunConfig(model=str(model), box_data=str(box), box_images=str(data / "images"), iters=iters,
                                box_batch=4, box_size=size, lr=lr, weight_decay=wd, warmup=min(50, iters // 10),
                                seed=seed, checkpoint_every=10**9, log_every=25, eval_data=str(data / "val.json"),
                                eval_images=str(data / "images"), novel=NOVEL), out)
    if result["state"] != "finished":
        sys.exit(f"{out.name} stopped; re-run to redo it")
    return result["evaluation"], time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/aligndet_synthetic"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 1.0])
    ap.add_argument("--short", type=int, default=150, help="short fine-tuning schedule (iterations)")
    ap.add_argument("--normal", type=int, default=0, help="also a normal schedule of this many iterations")
    ap.add_argument("--pretrain-iters", type=int, default=200)
    ap.add_argument("--recipe", action="store_true", help="also (c): AlignDet's lr x1.5, weight decay x0.5")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n-box", type=int, default=240)
    ap.add_argument("--n-unlabelled", type=int, default=240, help="extra unlabelled images beside the box images")
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args()
    size = args.size
    data = args.work / "data"
    if not (data / "meta.json").exists():
        generate(data, seed=0, n_box=args.n_box, n_label=args.n_unlabelled, n_val=80, size=size)
    unlabelled = args.work / "unlabelled"  # box-train + image-label images, no labels of any kind
    if not unlabelled.exists():
        unlabelled.mkdir(parents=True)
        for sub in ("box_train", "image_labels"):
            (unlabelled / sub).symlink_to((data / "images" / sub).resolve())
    cfg = experiment_config(size, False).replace(rpn_trained=True)
    schedules = {"short": args.short, **({"normal": args.normal} if args.normal else {})}
    inits = ["preset", "aligndet"] + (["aligndet_recipe"] if args.recipe else [])
    rows: list[dict] = []
    times: dict[str, list[float]] = {}
    t0 = time.time()
    lr, wd = 2e-4, 1e-4
    for seed in args.seeds:
        init = args.work / f"init_seed{seed}"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            save_checkpoint(OpenVocabDetector(cfg), init)
        pre = args.work / f"pretrain_seed{seed}"
        if RunDir(pre).status().get("state") != "finished":
            shutil.rmtree(pre, ignore_errors=True)
            t = time.time()
            r = pretrain(PretrainConfig(images=str(unlabelled), model=str(init), iters=args.pretrain_iters, batch=4,
                                        size=size, jitter=(0.5, 1.5), warmup=min(50, args.pretrain_iters // 10),
                                        lr=lr, weight_decay=wd, seed=seed, log_every=10,
                                        checkpoint_every=10**9), pre)
            if r["state"] != "finished":
                sys.exit("pre-training stopped; re-run to redo it")
            times.setdefault("pretrain_s", []).append(time.time() - t)
            times.setdefault("proposals_s", []).append(r["proposal_seconds"])
            print(f"[{time.time() - t0:7.0f}s] pretrain seed {seed}: {r['seconds']:.0f} s, "
                  f"{r['proposals_per_image']:.1f} proposals/image, last {r['last']}", flush=True)
        for frac in args.fractions:
            box = subset(data, frac, seed, args.work / f"box_{frac:g}_seed{seed}.json")
            for sched, iters in schedules.items():
                for name in inits:
                    out = args.work / f"{name}_{frac:g}_{sched}_seed{seed}"
                    recipe = name == "aligndet_recipe"
                    run = RunDir(out)
                    if run.status().get("state") == "finished" and run.evaluation():  # done before: reuse
                        evaluation, seconds = run.evaluation(), run.summary().get("seconds", 0.0)
                        print(f"{out.name}: reusing the finished run", flush=True)
                    else:
                        evaluation, seconds = _finetune(init if name == "preset" else pre, box, data, iters, size,
                                                        lr * (1.5 if recipe else 1), wd * (0.5 if recipe else 1),
                                                        seed, out)
                    ev = evaluation["base"]  # the classes that have boxes (novel ones never do here)
                    row = {"seed": seed, "fraction": frac, "schedule": sched, "init": name,
                           "AP": ev["AP"], "AP50": ev["AP50"], "seconds": seconds}
                    rows.append(row)
                    print(f"[{time.time() - t0:7.0f}s] " + json.dumps(row), flush=True)
                    shutil.rmtree(out / "checkpoints", ignore_errors=True)

    def ms(vals):
        vals = [100 * v for v in vals]
        return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.1f}"

    lines = ["| box labels | schedule | init | AP | AP50 | fine-tune s |", "|---|---|---|---|---|---|"]
    for frac in args.fractions:
        for sched in schedules:
            for name in inits:
                sel = [r for r in rows if (r["fraction"], r["schedule"], r["init"]) == (frac, sched, name)]
                lines.append(f"| {100 * frac:g} % | {sched} ({schedules[sched]} it) | {name} | "
                             f"{ms([r['AP'] for r in sel])} | {ms([r['AP50'] for r in sel])} | "
                             f"{statistics.mean(r['seconds'] for r in sel):.0f} |")
    cmd = "python bench/aligndet_synthetic.py " + " ".join(sys.argv[1:])
    note = (f"{len(args.seeds)} seed(s); pre-training {args.pretrain_iters} iterations x 4 images on "
            f"{args.n_box + args.n_unlabelled} unlabelled images ({size} px): "
            + ", ".join(f"{k} {statistics.mean(v):.0f}" for k, v in times.items())
            + f"; {time.time() - t0:.0f} s total. Classes with boxes: {len(BASE)}. Command: `{cmd.strip()}`")
    table = "\n".join(lines)
    print(table + "\n" + note)
    (args.work / "results.json").write_text(json.dumps({"rows": rows, "times": times}, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n\n" + note + "\n")


if __name__ == "__main__":
    main()
