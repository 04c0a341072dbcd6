"""Start the app: `ovdet-app` or `python app.py` [--host 127.0.0.1] [--port 7860] [--model auto] [--data-dir DIR].

Environment: APP_HOST, APP_PORT, APP_MODEL, DATA_DIR, APP_USERNAME + APP_PASSWORD (optional
login), APP_MAX_FILE_SIZE (default 50mb), APP_SHARE=1, APP_ALLOWED_DIRS and APP_ALLOW_SERVER_TOKEN
(what visitors may make the server read or use: see app/policy.py and docs/security.md). On a Hugging Face Space (SPACE_ID set)
the app listens on 0.0.0.0 and keeps its data in /data when persistent storage is attached.
"""

from __future__ import annotations

import argparse
import logging
import os

from app.zerogpu import import_spaces

import_spaces()  # on ZeroGPU `spaces` comes before torch; this module imports torch only in main()


def build_parser(env=os.environ) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_space = bool(env.get("SPACE_ID"))
    ap.add_argument("--host", default=env.get("APP_HOST", "0.0.0.0" if on_space else "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(env.get("APP_PORT", env.get("GRADIO_SERVER_PORT", "7860"))))
    ap.add_argument("--model", default=env.get("APP_MODEL", "auto"),
                    help="auto (coco-clip when downloadable, else offline), a preset, a checkpoint folder or a Hub id")
    ap.add_argument("--data-dir", default=None, help="labels, images, models and runs (default $DATA_DIR, /data, ./data)")
    ap.add_argument("--share", action="store_true", default=env.get("APP_SHARE") == "1")
    return ap


def launch_kwargs(args: argparse.Namespace, data_dir, env=os.environ) -> dict:
    """Everything `Blocks.launch` gets: address, optional login, upload limit, file access."""
    from app.ui import launch_options
    from app.ui.common import login_app_kwargs

    user, password = env.get("APP_USERNAME"), env.get("APP_PASSWORD")
    login = bool(user and password)
    return {
        "server_name": args.host, "server_port": args.port, "share": args.share,
        "auth": (user, password) if login else None,
        # With a login, a visitor not logged in gets the login page only (no endpoint names).
        **({"app_kwargs": login_app_kwargs()} if login else {}),
        "max_file_size": env.get("APP_MAX_FILE_SIZE", "50mb"),
        # Nothing of the data folder is served: the UI shows stored images as pixels it sends itself.
        "allowed_paths": [],
        **launch_options(),
    }


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from app.service import AppService
    from app.ui import build_app
    from detector.hub import go_offline_if_unreachable

    go_offline_if_unreachable(logging.getLogger("app"))  # once, in seconds, instead of minutes of retries
    service = AppService(args.data_dir, model=args.model)
    logging.getLogger("app").info("serving %s (%s); data in %s", service.serving.source,
                                  service.serving.note, service.data_dir)
    build_app(service).launch(**launch_kwargs(args, service.data_dir.resolve()))


COMMANDS = {"app": "start the app (as ovdet-app)", "predict": "detect in images, folders, globs, videos",
            "export-onnx": "write an ONNX model with a vocabulary baked in",
            "finetune": "train a model", "pretrain": "pre-train without labels", "dryrun": "measure a run",
            "evaluate": "COCO AP of a model", "synthetic": "write the synthetic benchmark"}
DETECTOR_COMMANDS = ("predict", "export-onnx")  # python -m detector; the others: python -m train


def ovdet(argv: list[str] | None = None) -> int:
    """`ovdet COMMAND ...`: one command for every CLI (`ovdet predict|export-onnx` = `python -m detector
    ...`, `ovdet finetune|pretrain|dryrun|evaluate|synthetic` = `python -m train ...`, `ovdet app` =
    `ovdet-app`)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        from detector import __version__

        if argv and argv[0] in ("--version", "-V"):
            print(f"ovdet {__version__}")
            return 0
        print(f"usage: ovdet {{{','.join(COMMANDS)}}} ...\n" + "".join(f"  {c:<9} {h}\n" for c, h in COMMANDS.items()),
              file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "app":
        main(argv[1:])
        return 0
    if argv[0] in DETECTOR_COMMANDS:
        from detector.cli import main as predict

        return predict(argv, prog="ovdet")
    from train.cli import main as train

    return train(argv, prog="ovdet")
