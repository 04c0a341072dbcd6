"""The memory a training process may take: one visitor's settings must not take the server's.

A run with legal but huge settings (4096 px image-labelled images, heavy heads, the whole
backbone trained) grew past 15 GB within 30 s on a 16 GB machine, and the kernel's
out-of-memory killer then picks a process, maybe the app's. The app gives each process it starts
a budget (`BUDGET_ENV`, GB; by default the machine's memory less a reserve); the process caps
its data segment there (RLIMIT_DATA: heap and private mappings, which is where tensors live), so
an allocation past it fails at once, inside the process, and the run fails with one sentence
(`explain`) instead of being killed or killing something else.

With CUDA the cap is not set: the CUDA driver maps large private regions of its own, and the
tensors that grow with the settings live in GPU memory, whose exhaustion torch reports itself.
"""

from __future__ import annotations

import os

BUDGET_ENV = "APP_RUN_MEMORY_GB"
# What the app, its pages' work and the OS keep by default: a quarter of the machine's memory, at
# least 2 GB (16 GB: a run may take 12; 8 GB: 6). The cap counts the data segment, which runs ~0.5 GB
# above the resident memory of a run of the offline model (2.1 vs 1.5 GB measured).
RESERVE_SHARE, RESERVE_MIN_GB = 0.25, 2.0


def machine_memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # not a POSIX system that says
        return None


def default_budget_gb(env=os.environ) -> float | None:
    """What a started process may take: the operator's `APP_RUN_MEMORY_GB` (0: no cap), else the
    machine's memory less the reserve."""
    given = env.get(BUDGET_ENV, "").strip()
    if given:
        try:
            value = float(given)
        except ValueError:
            raise ValueError(f"{BUDGET_ENV} must be a number of GB (0 for no cap), got {given!r}") from None
        return value if value > 0 else None
    total = machine_memory_gb()
    if not total:
        return None
    return round(max(total - max(RESERVE_MIN_GB, total * RESERVE_SHARE), 1.0), 1)


def _given_gb(env) -> float | None:
    """The budget the app gave this process (`BUDGET_ENV`), None when none or no number."""
    try:
        gb = float(env.get(BUDGET_ENV, "") or 0)
    except ValueError:
        return None
    return gb if gb > 0 else None


def apply_budget(env=os.environ) -> float | None:
    """Caps this process's data segment at `env[BUDGET_ENV]` GB (set by the app for what it
    starts; a CLI run without it has no cap). Returns the cap, or None when none was set."""
    import resource

    import torch

    gb = _given_gb(env)
    if gb is None or torch.cuda.is_available():
        return None
    limit = int(gb * 2**30)
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit / 2**30


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation refused: Python's MemoryError, or torch's CPU allocator giving up."""
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def explain(env=os.environ) -> str:
    """The sentence a run that ran out of its budget ends with."""
    gb = _given_gb(env)
    cap = f" ({gb:g} GB, {BUDGET_ENV})" if gb else ""
    return (f"this run needs more memory than this server gives a run{cap}: lower the image sizes or the "
            "batch, train fewer parts (heads, backbone), or hold out or tag fewer images")
