"""What every concern of `AppService` shares: the `@endpoint` marker the UI and the API are
generated from (`app.endpoints`), the progress-callback type and the parsing of uploads and name lists."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from detector.vocabulary import normalize_name


def endpoint(gpu: bool = False, api: bool = True, file: bool = False):
    """Mark a method as an app operation: a UI event and (with `api`) a named API endpoint of the
    same name. `gpu`: it runs the model (on a ZeroGPU Space it is wrapped in `spaces.GPU`).
    Operations on uploaded files (`api=False`) reach the API through their UI event instead.
    `file`: it returns a path the API sends as a file the caller downloads."""

    def mark(fn):
        fn.endpoint = {"gpu": gpu, "api": api, "file": file}
        return fn

    return mark


# A progress callback: (images done, images in all). Operations that take one (keyword-only) report
# through it; it is for in-process callers (the UI), never a parameter of the API.
Progress = Callable[[int, int], None]


def _upload_path(f) -> Path | None:
    """The local path of an uploaded file (Gradio gives str / FileData / tempfile objects)."""
    if isinstance(f, (bytes, bytearray)) or f is None:
        return None
    if isinstance(f, (str, Path)):
        return Path(f)
    return Path(getattr(f, "path", None) or getattr(f, "name", None) or str(f))


def _nonempty(value) -> bool:
    """Whether tags hold any name: blanks of any kind ("\n\t"), separators and invisible
    characters (a zero-width space) are none, as the vocabulary parser sees them."""
    if value is None:
        return False
    texts = [value] if isinstance(value, str) else [str(v) for v in value]
    return any(re.sub(r"[\s,;]+", "", normalize_name(t)) for t in texts)
