"""The one atomic file writer: a temporary file in the same folder, fsynced, then `os.replace`d,
so a process killed at any moment leaves either the old file or the new one, never half of one.
And the one pruner of temporary output folders (`remove_older_than`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, data, indent: int | None = 2) -> Path:
    return atomic_write(path, json.dumps(data, indent=indent, ensure_ascii=False))


def read_json(path: str | Path):
    """The parsed file, or None when it is missing or unreadable (e.g. being replaced right now)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def remove_older_than(folder: str | Path, age_s: float, keep: tuple[Path, ...] = ()) -> None:
    """Remove the entries of `folder` (files, or folders with what they hold) not modified for
    `age_s` seconds, except those in `keep`. Entries that vanish or cannot be removed meanwhile are
    left to the next call."""
    folder, now = Path(folder), time.time()
    if not folder.is_dir():
        return
    for old in folder.iterdir():
        try:
            if old not in keep and now - old.stat().st_mtime > age_s:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        except OSError:
            continue
