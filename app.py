"""Start the app: `python app.py [--host 127.0.0.1] [--port 7860] [--model auto] [--data-dir DIR]`
(installed: `ovdet-app`). The launcher itself is `app.launch`.

Environment: APP_HOST, APP_PORT, APP_MODEL, DATA_DIR, APP_USERNAME + APP_PASSWORD (optional
login), APP_MAX_FILE_SIZE (default 50mb), APP_SHARE=1, APP_ALLOWED_DIRS and APP_ALLOW_SERVER_TOKEN
(what visitors may make the server read or use: see app/policy.py and docs/security.md). On a Hugging Face Space (SPACE_ID set)
the app listens on 0.0.0.0 and keeps its data in /data when persistent storage is attached.
"""

from app.zerogpu import import_spaces

import_spaces()  # on a ZeroGPU Space, before anything imports torch (app/zerogpu.py)

from app.launch import build_parser, launch_kwargs, main  # noqa: E402

__all__ = ["build_parser", "launch_kwargs", "main"]

if __name__ == "__main__":
    main()
