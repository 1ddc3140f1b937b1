"""How things are measured: timed calls (alone or interleaved with others), a
kernel-by-kernel profile, summaries of the times (median, IQR, per-round ratios), the
thread counts, and peak resident memory.
"""
from __future__ import annotations

import os
import resource
import time

import numpy as np
import paths  # noqa: F401  (before simcore: the checkout when simcore is not installed)

import simcore


def time_calls(fn, warmup: int = 1, repeats: int = 5, budget: float | None = None) -> list[float]:
    """Seconds per call of fn(): `warmup` untimed calls, then up to `repeats`
    timed ones, stopping early (after at least one) once `budget` seconds have
    gone, so a slow backend cannot take all afternoon."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < max(1, repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if budget is not None and time.perf_counter() - start > budget:
            break
    return times


def time_interleaved(fns: dict, warmup: int = 1, repeats: int = 5,
                     budget: float | None = None) -> tuple[dict, dict]:
    """Time several functions in alternation (A B A B ...), so that a shared,
    noisy machine slows them alike and the per-round ratios stay meaningful.
    Returns ({name: [seconds]}, {name: what its first call returned})."""
    first = {}
    for _ in range(warmup):
        for name, fn in fns.items():
            out = fn()
            first.setdefault(name, out)
    times = {name: [] for name in fns}
    start = time.perf_counter()
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            first.setdefault(name, out)
        if budget is not None and time.perf_counter() - start > budget:
            break
    return times, first


def profile_kernels(fn, repeats: int = 3, warmup: int = 1) -> dict:
    """Where fn's wall time goes, kernel by kernel: every function of
    simcore._kernels is wrapped with a timer (about 0.3 us a call) while fn runs,
    so a kernel's time includes its argument checks; what is left of the total
    is NumPy and Python between the kernels. Returns total seconds per call and
    seconds per call for each kernel that ran."""
    import simcore._kernels as K
    names = [n for n in dir(K) if not n.startswith("_") and callable(getattr(K, n))]
    orig = {n: getattr(K, n) for n in names}
    spent = dict.fromkeys(names, 0.0)

    def timed(name, f):
        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t
        return call

    try:
        for n in names:
            setattr(K, n, timed(n, orig[n]))
        for _ in range(warmup):
            fn()
        spent.update(dict.fromkeys(names, 0.0))
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        total = (time.perf_counter() - t0) / repeats
    finally:
        for n, f in orig.items():
            setattr(K, n, f)
    return {"total_s": total, "kernels_s": {n: v / repeats for n, v in spent.items() if v > 0}}


def summary(times) -> dict:
    """Median, quartiles (IQR), min, max and count of a list of seconds."""
    a = np.asarray(times, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3),
            "min": float(a.min()), "max": float(a.max()), "n": int(a.size),
            "times": [float(x) for x in a]}


def ratio_summary(num, den) -> dict:
    """Per-round ratios num[i] / den[i] of interleaved timings: median, min, max."""
    r = np.asarray(num[:len(den)], np.float64) / np.asarray(den[:len(num)], np.float64)
    return {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max()),
            "n": int(r.size)}


def default_threads() -> list[int]:
    """1 and every core this process may use (thread scaling)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return [1, n] if n > 1 else [1]


def set_threads(n: int, torch=None) -> None:
    """The same thread count for simcore (OpenMP, BLAS single-threaded inside)
    and for PyTorch's intra-op pool."""
    simcore.set_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB.

    VmHWM (/proc/self/status): the high-water mark of this process's own address
    space, which starts afresh at exec. ru_maxrss alone would not do for child
    processes: Linux carries it over fork and exec, so a child started by a
    300 MB parent reports at least 300 MB (measured here: 789 MB for a child of
    an 800 MB parent whose own peak was 9 MB). ru_maxrss where there is no /proc.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    """getrusage's peak resident memory (KiB on Linux), inherited across fork/exec."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
