"""Count the aten ops a call issues: a device-independent proxy for GPU launch and sync cost.

On a GPU at detection sizes most of the pipeline's time is kernel launches and host syncs, and
each aten op the Python code calls is (at least) one launch. `torch.profiler` records every aten
call on the host whatever the device, so the counts below are the same on CPU and CUDA:

- *top-level ops*: aten events with no aten event among their ancestors (`cpu_parent` chain),
  i.e. the ops Python code calls directly; the ops an op calls internally (`aten::conv2d` ->
  `aten::convolution` -> ...) are not counted again. `record_shapes` is off.
- *host syncs*: every `aten::_local_scalar_dense` (what `.item()`, `bool(tensor)`, `int(tensor)`
  end in) and every `aten::nonzero` (boolean-mask indexing and `torch.where(mask)`: the output
  size must be read back); `aten::item` and `aten::is_nonzero` are reported too (each ends in a
  `_local_scalar_dense`, so they are not added to the sync total).
"""

from __future__ import annotations

from collections import Counter

import torch

SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero")


def _is_top_level(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def count_ops(fn) -> dict:
    """Run `fn()` once under the profiler -> {"top_level", "syncs", each of SYNC_OPS, "by_name"}."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = Counter(e.name for e in events if _is_top_level(e))
    every = Counter(e.name for e in events)
    out = {"top_level": sum(top.values()), **{name: every[name] for name in SYNC_OPS}}
    out["syncs"] = every["aten::_local_scalar_dense"] + every["aten::nonzero"]
    out["by_name"] = dict(top.most_common())
    return out
