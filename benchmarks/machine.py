"""The machine a benchmark runs on: its CPU, memory, load, library versions and BLAS
(recorded in every results JSON and report), the environment that caps every library at
one vector level, and PyTorch, the optional comparison.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess

from paths import REPO  # before simcore: the checkout when simcore is not installed

import simcore

# The environment that caps every library in a run at one vector level (read by each
# library when it loads, so a level needs a fresh process): simcore's kernels, its
# OpenBLAS (AVX2: Haswell kernels), PyTorch's ATen kernels, oneDNN and MKL. None =
# leave unset (the library's own choice). At the baseline level neither side's BLAS
# is capped: MKL (PyTorch's sgemm) ignores MKL_ENABLE_INSTRUCTIONS on AMD CPUs
# (torch.mm ran at the same 181 GFLOP/s with SSE4_2 as without, EPYC Zen 4), so
# capping OpenBLAS alone would compare SSE GEMMs with AVX-512 ones. At the AVX-512 level
# oneDNN keeps its bf16 instructions (AVX512_CORE_BF16: simcore's level has AVX512_BF16
# too): capped at AVX512_CORE, its bf16 torch.mm fell from ~1,000 to ~170 GFLOP/s and
# autocast ran slower than float32 (AMD EPYC Zen 5, 2 threads), no fair comparison.
LEVEL_CAPS = ("SIMCORE_ISA", "OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
              "MKL_ENABLE_INSTRUCTIONS")
LEVEL_ENV = {
    "avx512": dict(zip(LEVEL_CAPS, ("avx512", None, "avx512", "AVX512_CORE_BF16", "AVX512"))),
    "avx2": dict(zip(LEVEL_CAPS, ("avx2", "Haswell", "avx2", "AVX2", "AVX2"))),
    "baseline": dict(zip(LEVEL_CAPS, ("baseline", None, "default", "SSE41", "SSE4_2"))),
}

TORCH_INSTALL = "pip install .[torch]  (the pinned CPU build, see pyproject.toml)"


# ---- optional torch -------------------------------------------------------------------

def import_torch(disabled: bool = False):
    """(torch, None) or (None, why not): PyTorch is an optional comparison."""
    if disabled:
        return None, "skipped (--no-torch)"
    try:
        import torch
    except ImportError:
        return None, f"not available: install with `{TORCH_INSTALL}`"
    return torch, None


# ---- the machine ------------------------------------------------------------------------

def _cpuinfo() -> dict:
    model, flags, cores, logical, family_model = None, set(), set(), 0, {}
    phys = core = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "processor":
                    logical += 1
                elif key == "model name" and model is None:
                    model = val
                elif key in ("cpu family", "model") and key not in family_model:
                    family_model[key] = val
                elif key == "flags" and not flags:
                    flags = set(val.split())
                elif key == "physical id":
                    phys = val
                elif key == "core id":
                    core = val
                    cores.add((phys, core))
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
    if model and len(family_model) == 2:  # "AMD EPYC" alone names no generation
        model += f" (family {family_model['cpu family']}, model {family_model['model']})"
    return {"model": model or platform.processor() or platform.machine(),
            "logical_cpus": logical or os.cpu_count(),
            "physical_cores": len(cores) or None,
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "simd": [f for f in wanted if f in flags]}


def _meminfo_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return None


def _git() -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = run("rev-parse", "--short", "HEAD")
    # dirty: a tracked file differs from the commit (untracked files, such as a run's own
    # reports in benchmarks/results/, change no code)
    dirty = bool(run("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {"commit": commit or None, "dirty": dirty}


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or no __version__
        return None


def machine_info(torch=None) -> dict:
    """What ran the benchmark: CPU, memory, load, library versions, the BLAS."""
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpuinfo(),
        "memory_gb": _meminfo_gb(),
        # The machine may be shared: the load says how much to trust absolute times.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in ("simcore", "numpy", "scipy", "threadpoolctl", "PIL")},
        "git": _git(),
        "blas": simcore.blas_info(),
        "simcore_cpu": simcore.cpu_info(),
        "env": {k: os.environ[k] for k in ("SIMCORE_BLAS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                            "MKL_NUM_THREADS", *LEVEL_CAPS) if k in os.environ},
    }
    if torch is not None:
        info["versions"]["torch"] = torch.__version__
        info["torch"] = {"num_threads": torch.get_num_threads(),
                         "mkl": torch.backends.mkl.is_available(),
                         "mkldnn": torch.backends.mkldnn.is_available(),
                         "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return info


def machine_markdown(m: dict) -> str:
    """A machine_info result as the bullet list under every report's title."""
    cpu, v, b = m["cpu"], m["versions"], m["blas"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average"]) if m.get("load_average") else "?"
    versions = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    git = m["git"]
    lines = [
        f"- Machine: {cpu['model']}, {cpu['logical_cpus']} logical CPUs "
        f"({cpu['physical_cores'] or '?'} physical cores, {cpu['usable_cpus']} usable), "
        f"{m['memory_gb']} GB RAM, SIMD: {' '.join(cpu['simd']) or 'none detected'}",
        f"- Load average at start: {load} (a shared machine slows absolute times; "
        "the interleaved ratios hold better)",
        f"- Python {m['python']}; {versions}",
        f"- simcore BLAS: {b.get('library')} via {b.get('interface')} "
        f"({b.get('internal_api') or '?'} {b.get('version') or ''} {b.get('architecture') or ''}".rstrip()
        + f"), file {b.get('filepath')}",
        f"- simcore vector level: **{m['simcore_cpu']['isa']}** (this CPU runs "
        f"{', '.join(m['simcore_cpu']['supported'])})"
        + (f"; caps in force: {', '.join(f'{k}={v}' for k, v in m['env'].items() if k in LEVEL_CAPS)}"
           if any(k in LEVEL_CAPS for k in m.get("env", {})) else ""),
        f"- Commit {git.get('commit')}{' (uncommitted changes)' if git.get('dirty') else ''}, {m['date_utc']}",
    ]
    if "torch" in m:
        t = m["torch"]
        lines.append(f"- PyTorch {v.get('torch')}: MKL {t['mkl']}, oneDNN {t['mkldnn']}, "
                     f"CPU capability {t['cpu_capability']}")
    return "\n".join(lines)
