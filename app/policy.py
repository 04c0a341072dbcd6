"""What a visitor may make the server do: the operator's allow-list, read once from the environment.

A public address (a Space, `--host 0.0.0.0`) is reached by strangers, so by default the server
touches only uploads and its own data folder:
- `APP_ALLOWED_DIRS` (paths separated by `:`): folders visitors may import images from, train on
  (box / evaluation data) and load checkpoints from. Empty unless the operator sets it.
- `APP_ALLOW_SERVER_TOKEN=1`: "Push to Hub" may fall back to the server's `HF_TOKEN`. Off by default:
  the operator's secrets are never used on a visitor's behalf.
The checks live in `AppService`, so every event and API call is covered, visible in the UI or not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


class AccessDenied(ValueError):
    """A visitor asked for something the operator has not allowed; the message says how to allow it."""


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

    def server_path(self, path: str | Path, what: str = "path") -> Path:
        """`path` resolved (symlinks and `..` followed) if it lies inside an allowed folder."""
        resolved = Path(path).expanduser().resolve()
        if any(resolved == d or d in resolved.parents for d in self.allowed_dirs):
            return resolved
        raise AccessDenied(f"the {what} '{Path(path).name}' is not in a folder this server allows "
                           "(the operator lists them in APP_ALLOWED_DIRS)")

    def hub_token(self, typed: str | None) -> str:
        if typed:
            return typed
        if self.allow_server_token and os.environ.get("HF_TOKEN"):
            return os.environ["HF_TOKEN"]
        raise AccessDenied("type your own Hugging Face token (write access) to push")
