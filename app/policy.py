"""What a visitor may make the server do: the operator's allow-list, read once from the environment.

A public address (a Space, `--host 0.0.0.0`) is reached by strangers, so by default the server
touches only uploads and its own data folder:
- `APP_ALLOWED_DIRS` (paths separated by `:`): folders visitors may import images from, train on
  (box / evaluation data) and load checkpoints from. Empty unless the operator sets it.
- `APP_ALLOW_SERVER_TOKEN=1`: "Push to Hub", and Hub models loaded for a visitor (in the app or in the
  training processes it starts), may use the server's `HF_TOKEN`. Off by default: the operator's
  secrets are never used on a visitor's behalf (`visitor_hub`, `child_env`).
- Links: every server path is resolved (links and `..` followed) and re-checked, including each
  file found inside an allowed folder (`allowed_files`); the training processes get the same list
  (`child_env`: OVD_READ_ROOTS, read by `detector.images`).
The checks live in `AppService`, so every event and API call is covered, visible in the UI or not.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from detector.hub import set_default_token, token_scope
from detector.images import READ_ROOTS_ENV, list_image_files

from .zerogpu import zero_gpu

# Characters one text field of a request may hold (a vocabulary of MAX_NAMES names of ~50 characters):
# checked before anything parses it. Lists of texts count their items and characters together.
MAX_TEXT_CHARS = int(os.environ.get("APP_MAX_TEXT_CHARS", "100000"))

# What a child process must not inherit unless the operator allows the server token.
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")


class AccessDenied(ValueError):
    """A visitor asked for something the operator has not allowed; the message says how to allow it."""


class TooLarge(ValueError):
    """A request over one of the limits; the message names the field and the limit."""


def check_text(name: str, value) -> None:
    """Refuse a text field (or a list of texts) over MAX_TEXT_CHARS characters, before any parsing."""
    if isinstance(value, str):
        size = len(value)
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        size = sum(len(v) for v in value) + len(value)
    else:
        return
    if size > MAX_TEXT_CHARS:
        raise TooLarge(f"'{name}' holds {size:,} characters; at most {MAX_TEXT_CHARS:,} are accepted")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def check_value(name: str, annotation: str, value) -> None:
    """Refuse a parameter whose type is not the one its operation declares (`annotation`, e.g.
    "int | None"), in one sentence, before the operation runs: over the API a caller can send any
    JSON (a list for an image id, None or 1.5 or NaN for an iteration count), which otherwise ended
    in a bare "the app raised an exception", a Python message or a run of 1 iteration. Text may be
    None (an empty dropdown); numbers only where the annotation allows it."""
    kinds = {k.strip() for k in annotation.split("|")}
    if value is None and ("None" in kinds or not kinds & {"int", "float", "bool"}):
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    # (an int is whole and finite, however large: math.isfinite(10**400) would raise)
    whole = number and (isinstance(value, int) or (math.isfinite(value) and value.is_integer()))
    if "int" in kinds:
        if not whole:
            raise ValueError(f"{name} must be a whole number, got {_shown(value)}")
    elif "float" in kinds:
        if not (number and (abs(value) < 1e300 if isinstance(value, int) else math.isfinite(value))):
            raise ValueError(f"{name} must be a finite number, got {_shown(value)}")
    elif "bool" in kinds:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {_shown(value)}")
    elif "str" in kinds:
        texts = "list[str]" in kinds and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        if not (isinstance(value, str) or texts):
            raise ValueError(f"{name} must be text{' or a list of texts' if 'list[str]' in kinds else ''}, "
                             f"got {_shown(value)}")
    elif "list" in kinds and not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list, got {_shown(value)}")


@dataclass(frozen=True)
class AccessPolicy:
    allowed_dirs: tuple[Path, ...] = field(default_factory=tuple)
    allow_server_token: bool = False

    @classmethod
    def from_env(cls, env=os.environ) -> AccessPolicy:
        dirs = tuple(Path(p).expanduser().resolve() for p in env.get("APP_ALLOWED_DIRS", "").split(os.pathsep)
                     if p.strip())
        return cls(allowed_dirs=dirs, allow_server_token=env.get("APP_ALLOW_SERVER_TOKEN") == "1")

    @property
    def server_folders(self) -> bool:
        return bool(self.allowed_dirs)

    def allows(self, path: str | Path) -> bool:
        """Whether `path`, links and `..` followed, lies inside an allowed folder."""
        resolved = Path(path).expanduser().resolve()
        return any(resolved == d or d in resolved.parents for d in self.allowed_dirs)

    def server_path(self, path: str | Path, what: str = "path") -> Path:
        """`path` resolved (symlinks and `..` followed) if it lies inside an allowed folder."""
        resolved = Path(path).expanduser().resolve()
        if self.allows(resolved):
            return resolved
        typed = str(path) if len(str(path)) <= 80 else "…" + str(path)[-79:]  # as typed (not its last part)
        raise AccessDenied(f"the {what} '{typed}' is not in a folder this server allows "
                           "(the operator lists them in APP_ALLOWED_DIRS)")

    def hub_token(self, typed: str | None) -> str:
        if typed:
            return typed
        if self.allow_server_token and os.environ.get("HF_TOKEN"):
            return os.environ["HF_TOKEN"]
        raise AccessDenied("type your own Hugging Face token (write access) to push")

    def allowed_files(self, folder: str | Path) -> tuple[list[Path], list[str]]:
        """(image files under an allowed `folder` whose real paths lie in an allowed folder,
        one sentence per link skipped because it points outside them)."""
        outside: list[Path] = []
        files = list_image_files(self.server_path(folder, "folder"), inside=self.allowed_dirs, outside=outside)
        return files, [f"{p.name}: a link to a place outside the allowed folders (skipped)" for p in outside]

    def model_folder(self, path: str | Path) -> Path:
        """An allowed model folder whose files (config, weights), links followed, are allowed too."""
        folder = self.server_path(path, "model folder")
        if folder.is_dir():
            for f in folder.iterdir():
                if f.is_symlink() and not self.allows(f):
                    raise AccessDenied(f"the model folder '{Path(path).name}' holds '{f.name}', a link to a "
                                       "place outside the folders this server allows")
        return folder

    # --- Hub tokens ---------------------------------------------------------------------------
    def visitor_token(self, typed: str | None = None) -> str | bool | None:
        """The token a Hub download made for a visitor sends: the one they typed, else the
        server's (huggingface_hub's implicit one) only with APP_ALLOW_SERVER_TOKEN=1, else none."""
        if typed:
            return typed
        return None if self.allow_server_token else False

    def visitor_hub(self, typed: str | None = None):
        """A block whose Hub downloads (this thread only) send `visitor_token(typed)`."""
        token = self.visitor_token(typed)
        return token_scope(token) if token is not None else contextlib.nullcontext()

    def serve_visitors(self) -> None:
        """From now on this process's Hub downloads send no token unless the operator allows it
        (the startup model, the operator's own choice, was loaded before)."""
        set_default_token(None if self.allow_server_token else False)

    def child_env(self, read_roots: list[str | Path] | None = None, env=None) -> dict[str, str]:
        """The environment of a process started for a visitor (training, the dry run): without
        the operator's token unless allowed and, given `read_roots` (the data folder), reading
        images only under them and the allowed folders. On ZeroGPU, without CUDA (app/zerogpu.py)."""
        env = dict(os.environ if env is None else env)
        if not self.allow_server_token:
            for name in TOKEN_VARIABLES:
                env.pop(name, None)
            env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"  # nor the stored login (~/.cache/huggingface/token)
        if read_roots is not None:
            env[READ_ROOTS_ENV] = os.pathsep.join(str(Path(p).resolve()) for p in (*self.allowed_dirs, *read_roots))
        if zero_gpu(env):  # started outside any spaces.GPU call, it has no GPU: CPU only, said plainly
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env
