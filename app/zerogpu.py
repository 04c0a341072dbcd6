"""ZeroGPU (Hugging Face Spaces' shared GPUs): the one place that knows about `spaces`. Torch-free.

On a ZeroGPU Space (`SPACES_ZERO_GPU` set, which is what `spaces` itself reads):

- `spaces` must be imported before torch: it patches torch's CUDA at import (and refuses to start
  once CUDA is initialised). `app.py` and `app.launch` call `import_spaces()` before anything
  imports torch.
- After that import, `torch.cuda.is_available()` is True in the app's process and moving a model to
  "cuda" is recorded rather than done: the `Predictor` (device "cuda" by default) is placed on
  the GPU that a `@spaces.GPU` call attaches, for the length of the call. Every operation that
  runs the model (`@endpoint(gpu=True)` in app/service.py) is wrapped in `spaces.GPU` (`gpu`).
- A `spaces.GPU` call runs in a forked process: what it changes in memory (caches) is not kept.
- Training and the dry run are separate processes started outside any GPU call: they run on the
  CPU (`AccessPolicy.child_env` hides CUDA from them).
Elsewhere nothing here does anything.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)


def zero_gpu(env=os.environ) -> bool:
    """Whether this process runs on a ZeroGPU Space (`spaces`' own test of SPACES_ZERO_GPU)."""
    return (env.get("SPACES_ZERO_GPU") or "").strip().lower() in ("1", "t", "true")


def import_spaces(env=os.environ):
    """On ZeroGPU, `spaces` (imported now: call this before anything imports torch); else None."""
    if not zero_gpu(env):
        return None
    if "spaces" not in sys.modules and "torch" in sys.modules:
        log.warning("torch was imported before spaces: ZeroGPU needs `import spaces` first (see app/zerogpu.py)")
    try:
        import spaces
    except ImportError:
        log.warning("SPACES_ZERO_GPU is set but the 'spaces' package is not installed: running without ZeroGPU")
        return None
    return spaces


def gpu(fn: Callable) -> Callable:
    """`fn` run under `spaces.GPU` (a GPU attached for the call) on ZeroGPU; `fn` itself elsewhere."""
    spaces = import_spaces()
    return spaces.GPU(fn) if spaces is not None else fn
