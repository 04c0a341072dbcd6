"""Start the app: `python app.py [--host 127.0.0.1] [--port 7860] [--model offline]`."""

import argparse
import os

from app.ui import build_app
from detector import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default=os.environ.get("APP_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("APP_PORT", "7860")))
    ap.add_argument("--model", default=os.environ.get("APP_MODEL", "offline"))
    ap.add_argument("--share", action="store_true")
    args = ap.parse_args()
    build_app(Predictor.from_pretrained(args.model)).launch(server_name=args.host, server_port=args.port,
                                                             share=args.share)


if __name__ == "__main__":
    main()
