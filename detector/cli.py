"""`python -m detector predict IMAGE... --vocabulary "cat, dog"`: JSON out, optional drawing."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .annotate import annotate, detections_to_records


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m detector", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="detect a vocabulary in images")
    pr.add_argument("images", nargs="+", help="image files")
    pr.add_argument("--vocabulary", "-v", required=True, help="class names, comma separated")
    pr.add_argument("--model", "-m", default=None,
                    help="preset (offline, tiny, resnet50-clip), checkpoint folder or Hub id")
    pr.add_argument("--score-threshold", type=float, default=None)
    pr.add_argument("--nms-threshold", type=float, default=None)
    pr.add_argument("--max-detections", type=int, default=None)
    pr.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    pr.add_argument("--out", type=Path, default=None, help="write JSON here instead of stdout")
    pr.add_argument("--annotated", type=Path, default=None,
                    help="write the annotated image here (a folder when several images are given)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from . import Predictor
    from .checkpoint import CheckpointError
    from .hub import HubUnavailableError
    from .images import ImageLoadError, load_image

    for target in (args.out, args.annotated if args.annotated and len(args.images) == 1 else None):
        if target is not None and not target.parent.is_dir():  # before any work is done
            print(f"error: the folder of '{target}' does not exist", file=sys.stderr)
            return 2
    try:
        predictor = Predictor.from_pretrained(args.model, device=args.device)
        paths, images, bad = [], [], []
        for p in args.images:  # decoded once: for the model and the drawing; bad ones listed, not fatal
            try:
                images.append(load_image(p))
                paths.append(p)
            except ImageLoadError as e:
                bad.append(str(e))
        dets = predictor.predict(images, args.vocabulary, args.score_threshold,
                                 args.nms_threshold, args.max_detections) if images else []
    except (ImageLoadError, CheckpointError, HubUnavailableError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = [{"image": str(path), "detections": detections_to_records(d)} for path, d in zip(paths, dets)]
    text = json.dumps(result if len(args.images) > 1 else (result[0] if result else []), indent=2,
                      ensure_ascii=False)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    elif result:
        print(text)
    if args.annotated:
        from PIL import Image

        for path, image, d in zip(paths, images, dets):
            target = args.annotated
            if len(args.images) > 1:
                target.mkdir(parents=True, exist_ok=True)
                target = target / (Path(path).stem + ".png")
            Image.fromarray(annotate(image, d)).save(target)
    for message in bad:
        print(f"error: {message}", file=sys.stderr)
    return 2 if bad else 0
