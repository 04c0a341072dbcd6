"""Start the app: `python app.py [--host 127.0.0.1] [--port 7860] [--model offline] [--data-dir DIR]`.

Environment: APP_HOST, APP_PORT, APP_MODEL, DATA_DIR, APP_USERNAME + APP_PASSWORD (optional
login), APP_MAX_FILE_SIZE (default 50mb), APP_SHARE=1.
"""

import argparse
import logging
import os

from app.service import AppService
from app.ui import build_app, launch_options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_space = bool(os.environ.get("SPACE_ID"))
    ap.add_argument("--host", default=os.environ.get("APP_HOST", "0.0.0.0" if on_space else "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("APP_PORT", os.environ.get("GRADIO_SERVER_PORT", "7860"))))
    ap.add_argument("--model", default=os.environ.get("APP_MODEL", "auto"),
                    help="auto (coco-clip when downloadable, else offline), a preset, a checkpoint folder or a Hub id")
    ap.add_argument("--data-dir", default=None, help="labels, images, models and runs (default $DATA_DIR, /data, ./data)")
    ap.add_argument("--share", action="store_true", default=os.environ.get("APP_SHARE") == "1")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    service = AppService(args.data_dir, model=args.model)
    logging.getLogger("app").info("serving model %s (%s); data in %s", service.model_info.source,
                                  service.model_info.note, service.data_dir)
    user, password = os.environ.get("APP_USERNAME"), os.environ.get("APP_PASSWORD")
    build_app(service).launch(
        server_name=args.host, server_port=args.port, share=args.share,
        auth=(user, password) if user and password else None,
        max_file_size=os.environ.get("APP_MAX_FILE_SIZE", "50mb"),
        allowed_paths=[str(service.data_dir.resolve())],
        **launch_options(),
    )


if __name__ == "__main__":
    main()
