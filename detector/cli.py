"""`python -m detector predict INPUT... --vocabulary "cat, dog"`: detections as JSON, JSONL, CSV or COCO.
`python -m detector export-onnx --model tiny --vocabulary "cat, dog" --out model.onnx`: an ONNX
model with the vocabulary baked in (see detector.onnx_export).

Inputs are image files, folders (their images, recursively), glob patterns ("shots/*.jpg",
"**/*.png") and videos (every `--frame-stride`-th frame, each reported with its index and time).
Every input is found (and every video opened) before the model loads; an image that cannot be
decoded is reported at the end while the others still run. A progress bar runs over the images and
frames. With several images, `--annotated FOLDER` keeps their sub-folders and names (one drawing each).
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from .annotate import annotate
from .video import VIDEO_SUFFIXES, InputError, Item, Video, detect_video, open_video, video_frames  # noqa: F401

FORMATS = ("json", "jsonl", "csv", "coco")
BATCH = 8  # images or frames per model call
MAX_HINTS = 10  # "nothing found" lines printed before a count of the rest


def _unit(text: str) -> float:
    """A threshold: a number in [0, 1] (argparse's error otherwise)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not 1 or more")
    return value


def _limits(parser: argparse.ArgumentParser) -> None:
    """Score and NMS thresholds and the box limit; unset, the model's own (its config)."""
    parser.add_argument("--score-threshold", type=_unit, default=None,
                        help="0-1 (default: the model's own, e.g. 0.2 for offline)")
    parser.add_argument("--nms-threshold", type=_unit, default=None, help="0-1 (default: the model's own)")
    parser.add_argument("--max-detections", type=_positive, default=None, help="per image (default: the model's own)")


def build_parser(prog: str = "python -m detector") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="detect a vocabulary in images, folders, globs and videos")
    pr.add_argument("images", nargs="+", metavar="INPUT", help="image files, folders, glob patterns or videos")
    pr.add_argument("--vocabulary", "-v", required=True, help="class names, comma separated")
    pr.add_argument("--model", "-m", default=None,
                    help="preset (offline, tiny, resnet50-clip, coco-clip), checkpoint folder or Hub id "
                         "(default: offline)")
    _limits(pr)
    pr.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    pr.add_argument("--format", "-f", choices=FORMATS, default="json",
                    help="json (one object, or a list), jsonl (one line per image or frame), csv (one row per "
                         "detection) or coco (detection results with scores)")
    pr.add_argument("--out", type=Path, default=None, help="write the detections here instead of stdout")
    pr.add_argument("--annotated", type=Path, default=None,
                    help="write the annotated image here: an image file name, or a folder (a name without "
                         "an ending is one, made if missing; several images: their sub-folders and names are "
                         "kept, as .png)")
    pr.add_argument("--frame-stride", type=int, default=1, help="videos: run on every N-th frame (default 1)")
    pr.add_argument("--annotated-video", type=Path, default=None,
                    help="write the video's detected frames, drawn, here (.mp4; one video input)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    ex = sub.add_parser("export-onnx", help="write an ONNX model with a vocabulary baked in",
                        description="ONNX export (models whose proposals and scores come from the network, "
                                    "e.g. 'tiny' or a checkpoint with a trained RPN and no region scoring). "
                                    "Input: one RGB image, float32 [3, H, W] in [0, 1], any size; outputs: "
                                    "boxes [N, 4] (xyxy pixels), scores [N], labels [N] (vocabulary indices).")
    ex.add_argument("--model", "-m", default=None, help="preset, checkpoint folder or Hub id")
    ex.add_argument("--vocabulary", "-v", required=True, help="class names, comma separated (baked in)")
    ex.add_argument("--out", "-o", type=Path, required=True, help="the .onnx file to write")
    _limits(ex)
    return p


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def expand_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """(image files, video files) the inputs name, in order; InputError on a missing file, a
    folder without images or a pattern that matches nothing."""
    from .images import IMAGE_SUFFIXES, list_image_files

    images, videos, problems = [], [], []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = [str(p) for p in list_image_files(path)]
            found += sorted(str(p) for p in path.rglob("*") if _is_video(p) and not p.name.startswith("."))
            if not found:
                problems.append(f"the folder '{given}' holds no images or videos")
        elif path.is_file():
            found = [given]
        elif glob.has_magic(given):
            found = sorted(p for p in glob.glob(given, recursive=True)
                           if Path(p).is_file() and Path(p).suffix.lower() in (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES))
            if not found:
                problems.append(f"the pattern '{given}' matches no images or videos")
        else:
            found = []
            problems.append(f"'{given}' does not exist")
        for f in found:
            (videos if _is_video(Path(f)) else images).append(f)
    if problems:
        raise InputError("; ".join(problems))
    return list(dict.fromkeys(images)), list(dict.fromkeys(videos))


def _batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_output(records: list[dict], fmt: str, names: list[str], single: bool) -> str:
    if fmt == "json":
        return json.dumps(records[0] if single and records else records, indent=2, ensure_ascii=False) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["image", "frame", "time", "class_name", "score", "x1", "y1", "x2", "y2"])
        for r in records:
            for d in r["detections"]:
                w.writerow([r["image"], r.get("frame", ""), r.get("time", ""), d["class_name"], d["score"], *d["box"]])
        return buf.getvalue()
    images, anns = [], []
    file_names = _relative_names([r["image"] for r in records])
    for i, r in enumerate(records, 1):
        info = {"id": i, "file_name": file_names[i - 1], "path": r["image"], "width": r.get("width"),
                "height": r.get("height")}
        if "frame" in r:
            info.update(frame_index=r["frame"], time=r["time"])
        images.append(info)
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": d["class_id"] + 1,
                         "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                         "area": round((x2 - x1) * (y2 - y1), 2), "score": d["score"], "iscrowd": 0})
    return json.dumps({"info": {"description": "python -m detector predict"}, "images": images, "annotations": anns,
                       "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}, ensure_ascii=False) + "\n"


def _relative_names(paths: list[str]) -> list[str]:
    """COCO `file_name`s: each path below the folder all of them share ('sub1/photo.jpg' and
    'sub2/photo.jpg', not 'photo.jpg' twice)."""
    absolute = [os.path.abspath(p) for p in paths]
    try:
        root = os.path.commonpath([os.path.dirname(p) for p in absolute]) if absolute else ""
    except ValueError:  # paths on different drives
        return [Path(p).name for p in paths]
    return [Path(os.path.relpath(p, root)).as_posix() for p in absolute]


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def export_onnx_main(args) -> int:
    """`export-onnx`: refused, with the reason, for models whose proposals or scores run outside the network."""
    from .vocabulary import parse_vocabulary

    try:
        names = parse_vocabulary(args.vocabulary)
    except ValueError as e:
        return fail(str(e))
    if not args.out.parent.is_dir():
        return fail(f"the folder of '{args.out}' does not exist")

    from .checkpoint import CheckpointError
    from .embedding_cache import VocabularyEmbedder
    from .hub import HubUnavailableError
    from .onnx_export import OnnxExportError, check_exportable, export_onnx
    from .presets import PRESETS, load_detector

    try:
        if args.model in PRESETS:  # refused before any weights load
            check_exportable(PRESETS[args.model])
        model = load_detector(args.model, "cpu")
        check_exportable(model.config)
        names, emb = VocabularyEmbedder.for_config(model.config)(names)
        export_onnx(model, names, emb, args.out, score_threshold=args.score_threshold,
                    nms_threshold=args.nms_threshold, max_detections=args.max_detections)
    except ModuleNotFoundError as e:
        return fail(f"ONNX export needs the 'onnx' package ({e})")
    except (OnnxExportError, CheckpointError, HubUnavailableError, FileNotFoundError, ValueError) as e:
        return fail(str(e))
    print(f"wrote {args.out} ({len(names)} names: {', '.join(names)})", file=sys.stderr)
    return 0


def _no_library_bars() -> None:
    """--no-progress: the libraries' bars too ("Loading weights: 100%|..."). transformers, imported
    later, reads huggingface_hub's switch; imported already, it has its own."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def _checked_inputs(args) -> tuple | str:
    """Every input and output of `predict`, checked before the model loads: (names, image paths,
    videos, whether it is one image file), or the error's line."""
    from .vocabulary import parse_vocabulary

    if args.frame_stride < 1:
        return "--frame-stride must be 1 or more"
    try:
        names = parse_vocabulary(args.vocabulary)
        image_paths, video_paths = expand_inputs(args.images)
        videos = [open_video(v) for v in video_paths]
    except (InputError, ValueError) as e:
        return str(e)
    single = len(args.images) == 1 and len(image_paths) == 1 and not videos and Path(args.images[0]).is_file()
    if args.annotated_video is not None and len(videos) != 1:
        return f"--annotated-video needs exactly one video input ({len(videos)} given)"
    folder = args.annotated is not None and (args.annotated.is_dir() or (  # a name with no suffix is a folder,
        not args.annotated.suffix and args.annotated.parent.is_dir()))      # as it is for several images
    if single and folder:  # one image into a folder
        args.annotated.mkdir(exist_ok=True)
        args.annotated = args.annotated / Path(image_paths[0]).with_suffix(".png").name
    inputs = {Path(p).resolve() for p in (*image_paths, *video_paths)}
    for flag, target in (("--out", args.out), ("--annotated", args.annotated if single else None),
                         ("--annotated-video", args.annotated_video)):
        if target is None:
            continue
        if not target.parent.is_dir():
            return f"the folder of '{target}' does not exist"
        if target.resolve() in inputs:
            return f"{flag} '{target}' is one of the inputs: it would be overwritten (name another file)"
    several = not single and args.annotated is not None and image_paths
    if several and not args.annotated.is_dir() and args.annotated.suffix.lower() in _drawing_suffixes():
        return (f"--annotated '{args.annotated}' names a file, but {len(image_paths)} images are given: name "
                "a folder for their drawings")
    if single and args.annotated is not None and args.annotated.suffix.lower() not in _drawing_suffixes():
        return (f"--annotated '{args.annotated}' needs an image file name (.png, .jpg …) or a folder")
    return names, image_paths, videos, single


def _drawing_suffixes() -> set[str]:
    """The file name endings PIL can write a drawing as."""
    from PIL import Image

    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def main(argv: list[str] | None = None, prog: str = "python -m detector") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if getattr(args, "no_progress", False):
        _no_library_bars()
    if args.command == "export-onnx":
        return export_onnx_main(args)
    checked = _checked_inputs(args)
    if isinstance(checked, str):
        return fail(checked)
    names, image_paths, videos, single = checked

    from tqdm import tqdm

    from . import Predictor
    from .checkpoint import CheckpointError
    from .hub import HubUnavailableError
    from .images import ImageLoadError, load_image

    try:
        predictor = Predictor.from_pretrained(args.model, device=args.device)
    except (CheckpointError, HubUnavailableError, FileNotFoundError, ValueError) as e:
        return fail(str(e))
    total = len(image_paths) + sum(-(-v.frames // args.frame_stride) for v in videos)
    bar = tqdm(total=total or None, unit="img", disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)
    records, bad, hints = [], [], []
    drawn_as = annotated_names(image_paths) if args.annotated and not single else {}

    def run(loaded: list) -> list:
        return predictor.predict(loaded, names, args.score_threshold, args.nms_threshold, args.max_detections)

    try:
        for batch in _batches((Item(p) for p in image_paths), BATCH):
            kept, loaded = [], []
            for item in batch:  # decoded once: for the model and the drawing; bad ones listed, not fatal
                try:
                    loaded.append(load_image(item.source))
                    kept.append(item)
                except ImageLoadError as e:
                    bad.append(str(e))
            for item, image, det in zip(kept, loaded, run(loaded) if kept else []):
                height, width = image.original_size
                records.append({**item.record(det), "width": width, "height": height})
                if not len(det):  # the candidates' extra pass only for the lines printed; the rest are counted
                    hints.append(_empty_hint(predictor, item.source, image, names, args)
                                 if len(hints) < MAX_HINTS else item.source)
                if args.annotated:
                    _save_annotated(args.annotated, None if single else drawn_as[item.source], image, det)
            bar.update(len(batch))
        for video in videos:
            done = [0]

            def advance(n, _total, done=done):
                bar.update(n - done[0])
                done[0] = n

            frames, _, _ = detect_video(predictor, video.path, names, args.score_threshold, args.nms_threshold,
                                        args.max_detections, args.frame_stride, annotated=args.annotated_video,
                                        progress=advance)
            records.extend({**f, "width": video.size[0], "height": video.size[1]} for f in frames)
    except (ImageLoadError, ValueError) as e:
        bar.close()
        return fail(str(e))
    bar.close()
    text = write_output(records, args.format, names, single)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    elif records or args.format == "coco":
        sys.stdout.write(text)
    for hint in hints[:MAX_HINTS]:
        print(hint, file=sys.stderr)
    if len(hints) > MAX_HINTS:
        print(f"note: {len(hints) - MAX_HINTS} more images with nothing at or above the threshold", file=sys.stderr)
    for message in bad:
        print(f"error: {message}", file=sys.stderr)
    return 2 if bad else 0


def _empty_hint(predictor, source: str, image, names: list[str], args) -> str:
    """Never a silent empty answer (as on the Detect tab): an image with no box at the threshold
    gets one line naming its best candidates, so "not there" reads apart from "there, unsure"."""
    from .low_confidence import best_guesses

    threshold = args.score_threshold if args.score_threshold is not None else predictor.model.config.score_threshold
    guesses = best_guesses(predictor, image, names, args.nms_threshold, limit=3)
    if not len(guesses):
        return f"note: {source}: nothing at or above {threshold:g}, and no candidate for these names"
    best = ", ".join(f"{guesses.data['class_name'][i]} {guesses.confidence[i]:.2f}" for i in range(len(guesses)))
    return (f"note: {source}: nothing at or above {threshold:g}; best candidates (low confidence): {best} "
            f"(--score-threshold {max(0.01, float(guesses.confidence[0]) - 0.005):.2f} shows "
            f"{guesses.data['class_name'][0]})")


def annotated_names(paths: list[str]) -> dict[str, Path]:
    """Where each image's drawing goes inside the --annotated folder: its path below the inputs'
    common folder, as .png; inputs that would meet at one name (chelsea.jpg and chelsea.png) keep
    their suffix in it (chelsea_jpg.png), so no drawing overwrites another."""
    if not paths:
        return {}
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(a) for a in absolute])
    plain = {p: Path(os.path.relpath(a, root)).with_suffix(".png") for p, a in zip(paths, absolute)}
    taken: dict[Path, int] = {}
    for name in plain.values():
        taken[name] = taken.get(name, 0) + 1
    return {p: name if taken[name] == 1 else name.with_name(f"{Path(p).stem}_{Path(p).suffix.lstrip('.')}.png")
            for p, name in plain.items()}


def _save_annotated(target: Path, name: Path | None, image, det) -> None:
    """The drawing: at `target` (one image), or at `target / name` (several)."""
    from PIL import Image

    if name is not None:
        target = target / name
        target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(annotate(image, det)).save(target)
