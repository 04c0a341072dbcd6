"""`python -m train {finetune,pretrain,dryrun,evaluate,synthetic}`: the training CLIs (same functions the app calls).

`finetune`'s flags are generated from `RunConfig`'s fields, `pretrain`'s from `PretrainConfig`'s;
`--config RUN/<config>.json` starts from a saved config (what the app launches), and flags given
beside it override it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from .run_config import ConfigBase, PretrainConfig, RunConfig, add_config_arguments, config_from_args
from .run_dir import RunDir

# Set by the app for a child it waits on (`app.jobs.TrainingJobs.measure`): the parent's pid.
PARENT_ENV = "OVD_EXIT_WITH_PARENT"


def exit_with_parent() -> None:
    """When the process named in PARENT_ENV is no longer this one's parent (the app was stopped
    or crashed), exit: a measurement nobody waits for would hold cores and gigabytes for minutes."""
    expected = os.environ.get(PARENT_ENV, "")
    if not expected.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(expected):
            time.sleep(1)
        os._exit(3)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _finetune_parser(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a detector from box labels and/or image-level labels",
                       description="Detic fine-tuning. Image-label files: Detic/COCO JSON with pos_category_ids, "
                                   "CSV (image,labels with ';' between labels) or JSONL ({image, labels}).")
    p.add_argument("--config", type=Path, help=f"a saved run config (RUN/{RunDir.CONFIG}); flags override it")
    p.add_argument("--out", type=Path, help="run directory (default: the folder of --config)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config_arguments(p)


def _pretrain_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="AlignDet pre-training of neck, RPN and box head on unlabelled images",
                       description="Box-domain pre-training (AlignDet) on a folder of unlabelled images: "
                                   "selective-search pseudo boxes, two views, box-level contrastive + regression "
                                   "losses, frozen backbone. The run folder is a model that finetune starts from.")
    p.add_argument("--config", type=Path, help=f"a saved config (RUN/{RunDir.PRETRAIN_CONFIG}); flags override it")
    p.add_argument("--out", type=Path, help="run directory (default: the folder of --config)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config_arguments(p, PretrainConfig)


def _dryrun_parser(sub) -> None:
    p = sub.add_parser("dryrun", help="measure a fine-tuning run's time per iteration and peak memory (no run is made)",
                       description="A few real training steps on synthetic images of the run's sizes and batches, "
                                   "with its head preset and backbone choice, on its device; prints JSON.")
    p.add_argument("--config", type=Path, help="a saved run config; flags override it")
    p.add_argument("--steps", type=int, default=2,
                   help="timed steps per batch kind after one warm-up (0: none; the loaded model's memory)")
    add_config_arguments(p)


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="COCO box AP of a model on a COCO dataset (all / novel / base / per class)")
    p.add_argument("--model", required=True, help="run directory, checkpoint folder, preset or Hub id")
    p.add_argument("--data", required=True, help="COCO JSON with boxes")
    p.add_argument("--images", required=True, help="the folder the data's file_name entries are relative to")
    p.add_argument("--novel", default=None, help="comma-separated novel class names")
    p.add_argument("--out", type=Path, default=None, help="write metrics JSON here")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


class Refused(ValueError):
    """A command that would harm the run folder it names: said, and the folder left as it is."""


def run_command(args: argparse.Namespace, cls: type[ConfigBase] = RunConfig) -> tuple[ConfigBase, Path]:
    """The (config, run directory) a `finetune` (or `pretrain`, with its `cls`) command line asks for.

    `--resume` alone continues the run with the config it saved (flags given beside it override
    it): without one, it had trained defaults and written them over the run's config. A new run
    into a folder that already holds one (checkpoints or metrics) is refused: it had left the old
    checkpoints beside a `latest.json` pointing at one that did not exist."""
    config_name = RunDir.CONFIG_FILES[cls.COMMAND]
    out = args.out or (args.config.parent if args.config else None)
    if out is None:
        raise ValueError(f"give --out RUN_DIR (or --config RUN/{config_name})")
    run = RunDir(out)
    base = cls.load(args.config) if args.config else None
    if args.resume and base is None:
        if not run.file(config_name).exists():
            raise Refused(f"nothing to resume in '{out}': it holds no {config_name} (start the run without --resume)")
        base = cls.load(run.file(config_name))
    if not args.resume and run.has_trained():
        status = run.status()
        raise Refused(f"'{out}' already holds a run ({status.get('state', 'unknown')} at iteration "
                      f"{status.get('iteration', '?')} of {status.get('total', '?')}): continue it with --resume, "
                      "or give a new --out")
    return config_from_args(args, base, cls), out


def finetune_command(args: argparse.Namespace) -> tuple[RunConfig, Path]:
    return run_command(args, RunConfig)


def main(argv: list[str] | None = None, prog: str = "python -m train") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    _finetune_parser(sub)
    _pretrain_parser(sub)
    _dryrun_parser(sub)
    _evaluate_parser(sub)
    sub.add_parser("synthetic", help="write the synthetic open-vocabulary benchmark", add_help=False)
    args, rest = ap.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "synthetic":
        from .synthetic import main as synthetic_main

        synthetic_main(rest, prog=f"{prog} synthetic")
        return 0
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    from detector import CheckpointError, HubUnavailableError

    from .data import DataError
    from .loop import Stopped
    from .memory_budget import apply_budget, explain, is_out_of_memory

    out = None
    if args.command in ("finetune", "pretrain", "dryrun"):
        apply_budget()  # the app's budget for what it starts (none for a CLI run of one's own)
    try:
        if args.command == "finetune":
            out = args.out or (args.config.parent if args.config else None)
            cfg, out = finetune_command(args)
            from .finetune import finetune

            result = finetune(cfg, out, resume=args.resume)
            summary = {k: result[k] for k in ("state", "iteration", "total", "seconds")}
            summary["evaluation"] = result.get("evaluation")
            summary.update(_heldout_lines(result.get("heldout"), RunDir(out)))
            print(json.dumps(summary, indent=2))
        elif args.command == "pretrain":
            out = args.out or (args.config.parent if args.config else None)
            cfg, out = run_command(args, PretrainConfig)
            from .pretrain import pretrain

            result = pretrain(cfg, out, resume=args.resume)
            print(json.dumps({k: result[k] for k in ("state", "iteration", "total", "images", "seconds")}, indent=2))
        elif args.command == "dryrun":
            exit_with_parent()
            from .dry_run import dry_run

            cfg = config_from_args(args, RunConfig.load(args.config) if args.config else None, RunConfig)
            print(json.dumps(dry_run(cfg, steps=max(0, args.steps)), indent=2))
        else:
            from detector import Predictor

            from .evaluate import evaluate_model

            novel = [n.strip() for n in args.novel.split(",") if n.strip()] if args.novel else None
            for given, what in ((args.data, "--data"), (args.images, "--images")):  # before the model loads
                if not Path(given).exists():
                    raise DataError(f"{what} '{given}' does not exist")
            if args.out is not None and not args.out.parent.is_dir():
                raise DataError(f"the folder of --out '{args.out}' does not exist")
            metrics = evaluate_model(Predictor.from_pretrained(args.model, device=args.device), args.data,
                                     args.images, novel)
            text = json.dumps(metrics, indent=2)
            if args.out:
                args.out.write_text(text + "\n", encoding="utf-8")
            print(text)
    except Refused as e:
        return _failed(str(e), None)
    except Stopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 130
    except (DataError, CheckpointError, HubUnavailableError, FileNotFoundError, ValueError) as e:
        return _failed(str(e), out)
    except (MemoryError, RuntimeError) as e:  # HubUnavailableError, a RuntimeError too, is answered above
        if not is_out_of_memory(e):
            raise
        return _failed(explain(), out)
    return 0


def _heldout_lines(heldout: dict | None, run: RunDir) -> dict:
    """The held-out verdict of a finished command, and which model to serve: the run folder loads
    its latest weights, `best/` the checkpoint the held-out tags chose (what the app's "Use" serves),
    which may differ (a late checkpoint scored worse)."""
    if not heldout or not heldout.get("images"):
        return {}
    from .heldout import caveat

    def ap(v) -> str:
        return "not measurable" if v is None else f"{v:.2f}"

    change = heldout.get("change")
    verdict = "" if change is None else " (better)" if change > 0 else " (worse)" if change < 0 else " (unchanged)"
    out = {"heldout": f"{heldout['images']} held-out images: mean image-level AP {ap(heldout.get('mean_before'))} "
                      f"-> {ap(heldout.get('mean_after'))} at the best checkpoint{verdict}"}
    if note := caveat(heldout):
        out["heldout_caveat"] = note
    served = run.served_model()
    if served != run.path and heldout.get("best_iteration") != heldout.get("latest_iteration"):
        out["serve"] = (f"{served} (iteration {heldout.get('best_iteration')}, chosen on the held-out images; "
                        f"{run.path} holds the latest weights)")
    return out


def _failed(reason: str, out) -> int:
    """A run that cannot go on: one "error: …" line (what the app shows) and, for a run folder, its
    "failed" status (a config that never started still ends the run)."""
    print(f"error: {reason}", file=sys.stderr)
    if out is not None and RunDir(out).exists():
        RunDir(out).write_status("failed", message=reason[:500])
    return 2
