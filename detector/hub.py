"""The one way anything is fetched from the Hugging Face Hub: fast failure with one clear line.

Every remote file (detector checkpoints, CLIP weights) goes through `download_snapshot` or
`download_file`. Offline (`HF_HUB_OFFLINE=1`) or with the Hub unreachable they raise
`HubUnavailableError` within seconds instead of retrying for minutes.

Which token they send is decided here too (`token_scope`, `set_default_token`): a server that loads
a Hub id on a visitor's behalf sends no token, or only the visitor's, never the operator's.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
from contextvars import ContextVar
from pathlib import Path

HUB_TIMEOUT_S = float(os.environ.get("OVD_HUB_TIMEOUT", "5"))
# The largest file fetched (GB): a visitor may name any Hub repo, or a checkpoint naming any text
# encoder, and each one kept in the cache for good (CLIP ViT-B/32 is 0.6 GB, a ViT-L 1.7 GB).
MAX_DOWNLOAD_GB = float(os.environ.get("OVD_MAX_DOWNLOAD_GB", "4"))
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubUnavailableError(RuntimeError):
    """The Hub could not be reached (offline, no network, or the repo/file does not exist)."""


def looks_like_repo_id(source: str) -> bool:
    return bool(_REPO_ID.match(source)) and not source.startswith((".", "/"))


def offline() -> bool:
    """huggingface_hub's own reading of HF_HUB_OFFLINE (the one offline flag, read at call time)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _first_sentence(text: str, most: int = 160) -> str:
    """The library's reason, to its first full stop, at most `most` characters cut at a word (it was
    cut mid-word: "To enable repo look-ups a")."""
    sentence = text.split(". ")[0].rstrip(".")
    if len(sentence) <= most:
        return sentence
    return sentence[:most].rsplit(" ", 1)[0] + " …"


def _explain(what: str, err: BaseException) -> HubUnavailableError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    mode = "HF_HUB_OFFLINE is set" if offline() else "offline or unreachable"
    return HubUnavailableError(
        f"could not fetch {what} from the Hugging Face Hub ({mode}: {_first_sentence(reason)}). "
        "Use a local folder, pre-populate the Hub cache on a connected machine "
        "(see docs/models.md), or use the packaged offline model ('offline')."
    )


# The `token` every download passes to huggingface_hub: None = its implicit token (HF_TOKEN or the
# stored login), False = none, a string = that token. A scope (`token_scope`) wins over the
# process default (`set_default_token`), which the app sets to False once it serves visitors.
_scoped_token: ContextVar[str | bool | None] = ContextVar("ovd_hub_token", default=None)
_default_token: str | bool | None = None


def set_default_token(token: str | bool | None) -> None:
    """The token downloads send outside any `token_scope` (False: none, None: huggingface_hub's implicit one)."""
    global _default_token
    _default_token = token


@contextlib.contextmanager
def token_scope(token: str | bool | None):
    """Downloads in this block (this thread / task only) send `token` (False: none)."""
    reset = _scoped_token.set(token if token is not None else _default_token)
    try:
        yield
    finally:
        _scoped_token.reset(reset)


def current_token() -> str | bool | None:
    scoped = _scoped_token.get()
    return scoped if scoped is not None else _default_token


def hub_endpoint() -> str | None:
    """HF_ENDPOINT, read at call time (not import time) so tests and users can point elsewhere."""
    return os.environ.get("HF_ENDPOINT") or None


PROBE_TIMEOUT_S = float(os.environ.get("OVD_HUB_PROBE_TIMEOUT", "2.5"))


def hub_unreachable_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when one TCP connect to the Hub's host (HF_ENDPOINT or huggingface.co) succeeds
    within `timeout` s, else why not: enough to tell "no network" from "online" before any
    download starts retrying."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(hub_endpoint() or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return None
    except OSError as e:
        return f"{url.hostname}:{port}: {e.strerror or type(e).__name__}"


def go_offline_if_unreachable(log=None) -> bool:
    """Probe the Hub once; when it cannot be reached, switch this process to offline mode
    (HF_HUB_OFFLINE, read by huggingface_hub and by `offline()`), so that nothing later waits on
    retries. Returns True when the process is (now) offline."""
    import logging

    from huggingface_hub import constants

    log = log or logging.getLogger(__name__)
    if offline():
        return True
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False  # the Hub is reached through a proxy: a direct connect proves nothing
    log.info("checking the Hub (%s)...", hub_endpoint() or "https://huggingface.co")
    reason = hub_unreachable_reason()
    if reason is None:
        return False
    log.warning("Hub unreachable (%s): working offline, serving the offline model unless a local one was "
                "asked for (HF_HUB_OFFLINE=1 for this process)", reason)
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    return True


def download_snapshot(repo_id: str, allow_patterns: list[str], revision: str | None = None) -> Path:
    """Local folder holding `allow_patterns` of `repo_id` (from cache when offline).

    Every request is bounded by huggingface_hub's documented timeouts: the file listing by
    `model_info(timeout=)`, each file's metadata by `etag_timeout` and its download by
    HF_HUB_DOWNLOAD_TIMEOUT (per read: a slow but live download proceeds). `snapshot_download`
    lists files without a timeout, so online it is used only through `download_file`."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        if offline():
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns,
                                          local_files_only=True, token=current_token()))
        info = HfApi(endpoint=hub_endpoint(), token=current_token()).model_info(
            repo_id, revision=revision, timeout=HUB_TIMEOUT_S)
        names = [f.rfilename for f in info.siblings or []
                 if any(fnmatch.fnmatchcase(f.rfilename, p) for p in allow_patterns)]
        if not names:
            raise FileNotFoundError(f"no file matching {', '.join(allow_patterns)}")
    except Exception as e:  # huggingface_hub raises many types; all mean "not available"
        raise _explain(f"'{repo_id}'", e) from None
    first = download_file(repo_id, names[0], info.sha)  # a commit hash: every file in one snapshot folder
    for name in names[1:]:
        download_file(repo_id, name, info.sha)
    return first.parents[len(Path(names[0]).parts) - 1]


def download_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """Local path of one file of a Hub repo (from cache when offline)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    try:
        if not offline():  # its size first (one HEAD request), so nothing too large is written
            size = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision, endpoint=hub_endpoint()),
                                        token=current_token(), timeout=HUB_TIMEOUT_S).size or 0
            if size > MAX_DOWNLOAD_GB * 2**30:
                raise HubUnavailableError(f"'{filename}' of '{repo_id}' is {size / 2**30:.1f} GB: larger than this "
                                          f"server downloads ({MAX_DOWNLOAD_GB:g} GB, OVD_MAX_DOWNLOAD_GB)")
        path = hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            etag_timeout=HUB_TIMEOUT_S,
            local_files_only=offline(),
            endpoint=hub_endpoint(),
            token=current_token(),
        )
    except HubUnavailableError:
        raise
    except Exception as e:
        raise _explain(f"'{filename}' of '{repo_id}'", e) from None
    return Path(path)


def download_first(repo_id: str, filenames: list[str], revision: str | None = None) -> Path:
    """The first of `filenames` that the repo has (e.g. alternative safetensors names)."""
    error: HubUnavailableError | None = None
    for name in filenames:
        try:
            return download_file(repo_id, name, revision)
        except HubUnavailableError as e:
            error = e
            if offline():  # nothing else will be found either
                break
    assert error is not None
    raise error
