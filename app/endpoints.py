"""The app's operations as callables, generated once from `AppService`'s `@endpoint` methods.

Both the Gradio events (`app.ui`) and the named API endpoints (`register_api`) call these same
objects, so the UI and the API take the same parameters and behave the same. Each one turns
expected errors into one readable `gr.Error` (never a traceback) and, when it runs the model on a
ZeroGPU Space, runs under `spaces.GPU`.
"""

from __future__ import annotations

import functools
import html
import inspect
import os
from collections.abc import Callable

import gradio as gr

from detector import CheckpointError, HubUnavailableError, ImageLoadError

from . import zerogpu
from .jobs import JobError
from .policy import check_text, check_value
from .service import AppService
from .store import StoreError

USER_ERRORS = (ValueError, ImageLoadError, StoreError, JobError, HubUnavailableError, CheckpointError,
               FileNotFoundError)


def friendly(fn: Callable) -> Callable:
    """Expected errors become one readable message in the UI / API response."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            # already readable (an inner `friendly`, or raised for the UI): gr.Error is a ValueError,
            # and wrapping it again escaped its text twice and quoted it (str() of a gr.Error is a repr)
            raise
        except USER_ERRORS as e:
            # Gradio 6 renders a toast's text as (sanitised) HTML: user text in errors is escaped once.
            raise gr.Error(html.escape(str(e), quote=False), print_exception=False) from None

    return wrapper


def on_zero_gpu(fn: Callable) -> Callable:
    """On a ZeroGPU Space, run `fn` on the GPU (`spaces.GPU`, see app/zerogpu.py); elsewhere unchanged."""
    return zerogpu.gpu(fn)


def limited(fn: Callable, method: Callable) -> Callable:
    """`fn` refusing, before it runs, any text parameter (annotated `str`) over the size limit
    (`app.policy.MAX_TEXT_CHARS`): a request's parsing memory and time stay bounded; and any
    parameter not of its declared type (`app.policy.check_value`), in one sentence."""
    sig = inspect.signature(method)
    texts = {n for n, p in sig.parameters.items() if "str" in str(p.annotation)}
    declared = {n: p.annotation for n, p in sig.parameters.items()
                if isinstance(p.annotation, str) and p.kind is not p.KEYWORD_ONLY}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = sig.bind_partial(*args, **kwargs)
        for name, value in bound.arguments.items():
            if name in texts:
                check_text(name, value)
            if name in declared:
                check_value(name, declared[name], value)
        return fn(*args, **kwargs)

    return wrapper


def make_endpoints(service: AppService) -> dict[str, Callable]:
    """name -> the service method, wrapped; `.endpoint` on each says {"gpu", "api"}."""
    out = {}
    for name, method in inspect.getmembers(type(service), callable):
        spec = getattr(method, "endpoint", None)
        if spec is None:
            continue
        bound = getattr(service, name)
        fn = friendly(limited(on_zero_gpu(bound) if spec["gpu"] else bound, bound))
        fn.__signature__ = _api_signature(bound)
        fn.endpoint = spec
        out[name] = fn
    return out


def _api_signature(method: Callable) -> inspect.Signature:
    """The parameters an API caller gives: keyword-only ones (a progress callback) are for the UI."""
    sig = inspect.signature(method)
    return sig.replace(parameters=[p for p in sig.parameters.values() if p.kind is not p.KEYWORD_ONLY])


def register_api(endpoints: dict[str, Callable]) -> None:
    """Named API endpoints (`/name`) for every operation over plain values; operations on
    uploaded files are reachable through their UI events, which carry the same name."""
    for name, fn in endpoints.items():
        if fn.endpoint["api"]:
            gr.api(plain_errors(as_file(fn) if fn.endpoint.get("file") else fn, fn), api_name=name)


def plain_errors(fn: Callable, operation: Callable) -> Callable:
    """`fn` for API callers only: its error text as written, not escaped for a toast (`friendly`
    escapes user text once because Gradio renders a toast as HTML; a `gr.api` endpoint is never
    shown in one, and its caller read "unknown model '&lt;img …&gt;'")."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as e:
            raise gr.Error(html.unescape(e.message), print_exception=False) from None

    wrapper.endpoint = operation  # as every UI handler: the one service operation it goes through
    return wrapper


def as_file(fn: Callable) -> Callable:
    """`fn` returning its path as Gradio's FileData: the API caller gets a file it can download
    (gradio_client fetches it), not a path on the server it could never read."""
    from gradio.data_classes import FileData

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        path = fn(*args, **kwargs)
        return FileData(path=str(path), orig_name=os.path.basename(str(path)))

    wrapper.__signature__ = inspect.signature(fn).replace(return_annotation=FileData)
    wrapper.endpoint = fn  # as every UI handler: the one service operation it goes through
    return wrapper
