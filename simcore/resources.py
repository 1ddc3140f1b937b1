"""What this machine can hold: memory and thread limits, checked before allocating,
so an absurd size is a message naming it instead of a MemoryError or a crash.

Imports nothing of simcore's.
"""
from __future__ import annotations

import os

GB = 1024 ** 3


def physical_memory() -> int | None:
    """Bytes of RAM, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(nbytes: float, what: str) -> None:
    """Raise MemoryError naming `what` if `nbytes` exceed this machine's RAM."""
    ram = physical_memory()
    if ram is not None and nbytes > ram:
        raise MemoryError(f"{what} needs {nbytes / GB:,.1f} GB; this machine has {ram / GB:,.1f} GB")


def max_threads() -> int:
    """The most threads simcore accepts: 4 per CPU (at least 64). Beyond that threads
    only wait for each other, and each needs its own stack and kernel scratch
    (100,000 of them crashed libgomp)."""
    return max(64, 4 * (os.cpu_count() or 1))
