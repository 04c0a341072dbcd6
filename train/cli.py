"""`python -m train {finetune,evaluate,synthetic}`: the training CLIs (same functions the app calls)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .finetune import FinetuneConfig


def _finetune_parser(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a detector from box labels and/or image-level labels",
                       description="Detic fine-tuning. Image-label files: Detic/COCO JSON with pos_category_ids, "
                                   "CSV (image,labels with ';' between labels) or JSONL ({image, labels}).")
    p.add_argument("--model", default="offline", help="starting point: preset, checkpoint folder or Hub id")
    p.add_argument("--box-data", help="COCO detection JSON (box labels)")
    p.add_argument("--box-images", help="folder the box JSON's file_name entries are relative to")
    p.add_argument("--label-data", help="image-level labels: Detic JSON, CSV or JSONL")
    p.add_argument("--label-images", help="folder the label file's image paths are relative to")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics, final model)")
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--image-loss", choices=["max_size", "image_box", "max_score"], default="max_size")
    p.add_argument("--image-loss-weight", type=float, default=0.1, help="lambda of the image-label loss")
    p.add_argument("--ratio", default="1:1", help="box:image-label batches, e.g. 1:4")
    p.add_argument("--box-batch", type=int, default=4)
    p.add_argument("--label-batch", type=int, default=8)
    p.add_argument("--box-size", type=int, default=640, help="shorter side of box-labelled images")
    p.add_argument("--label-size", type=int, default=320, help="shorter side of image-labelled images")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--eval-data", help="COCO JSON to evaluate on when training finishes")
    p.add_argument("--eval-images")
    p.add_argument("--novel", default=None, help="comma-separated novel class names (for evaluation)")


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="COCO box AP of a model on a COCO dataset (all / novel / base / per class)")
    p.add_argument("--model", required=True, help="run directory, checkpoint folder, preset or Hub id")
    p.add_argument("--data", required=True, help="COCO JSON with boxes")
    p.add_argument("--images", required=True)
    p.add_argument("--novel", default=None, help="comma-separated novel class names")
    p.add_argument("--out", type=Path, default=None, help="write metrics JSON here")
    p.add_argument("--device", default=None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    _finetune_parser(sub)
    _evaluate_parser(sub)
    sub.add_parser("synthetic", help="write the synthetic open-vocabulary benchmark", add_help=False)
    args, rest = ap.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "synthetic":
        from .synthetic import main as synthetic_main

        synthetic_main(rest)
        return 0
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    from detector import CheckpointError, HubUnavailableError

    from .data import DataError

    novel = [n.strip() for n in args.novel.split(",") if n.strip()] if args.novel else None
    try:
        if args.command == "finetune":
            cfg = FinetuneConfig(
                out=args.out, model=args.model, box_data=args.box_data, box_images=args.box_images,
                label_data=args.label_data, label_images=args.label_images, iters=args.iters,
                image_loss=args.image_loss, image_loss_weight=args.image_loss_weight, ratio=args.ratio,
                box_batch=args.box_batch, label_batch=args.label_batch, box_size=args.box_size,
                label_size=args.label_size, lr=args.lr, warmup=args.warmup, checkpoint_every=args.checkpoint_every,
                log_every=args.log_every, seed=args.seed, device=args.device, resume=args.resume,
                eval_data=args.eval_data, eval_images=args.eval_images, novel=novel,
            )
            from .finetune import finetune

            result = finetune(cfg)
            summary = {k: result[k] for k in ("state", "iteration", "total", "seconds")}
            summary["evaluation"] = result.get("evaluation")
            print(json.dumps(summary, indent=2))
        else:
            from detector import Predictor

            from .evaluate import evaluate_model

            metrics = evaluate_model(Predictor.from_pretrained(args.model, device=args.device), args.data,
                                     args.images, novel)
            text = json.dumps(metrics, indent=2)
            if args.out:
                args.out.write_text(text + "\n", encoding="utf-8")
            print(text)
    except (DataError, CheckpointError, HubUnavailableError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
