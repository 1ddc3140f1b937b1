"""Which vector level the kernels run at, and what this CPU can run.

The C kernels are built once per vector level of the architecture they were built
for (on x86-64: AVX-512, AVX2 + FMA and the baseline; on AArch64: NEON; elsewhere
a baseline; see csrc/dispatch.c) and the best level this CPU runs is used by
default. Capping it, as numpy's NPY_DISABLE_CPU_FEATURES, oneDNN's
ONEDNN_MAX_CPU_ISA and OpenBLAS's OPENBLAS_CORETYPE do, lets one machine run,
test and time every path:

    SIMCORE_ISA=avx2 python -m simcore.train      # read once, at import
    simcore.set_isa("baseline")                   # or at any time between calls

A level above what the CPU runs is an error, never a crash. The level is
process-wide; change it between kernel calls, not while another thread runs one.
"""
from __future__ import annotations

import os
import platform
import subprocess

from simcore import _kernels

LEVELS = _kernels.ISA_LEVELS  # this build's: ("baseline", "avx2", "avx512") on x86-64, ("neon",) on AArch64


def supported() -> list[str]:
    """The levels this CPU runs, lowest first."""
    return list(LEVELS[: LEVELS.index(_kernels.isa_best()) + 1])


def set_isa(name: str) -> None:
    """Run the kernels at vector level `name`: one of supported()."""
    if not isinstance(name, str) or name.lower() not in LEVELS:
        raise ValueError(f"unknown vector level {name!r}: choose from {', '.join(LEVELS)}")
    name = name.lower()
    if name not in supported():
        raise ValueError(f"this CPU cannot run vector level {name!r}: it runs "
                         f"{', '.join(supported())}")
    _kernels.isa_set(name)


def get_isa() -> str:
    """The vector level the kernels run at."""
    return _kernels.isa_get()


def _cpu_name() -> str:
    """The CPU's name: Linux's /proc/cpuinfo (x86 has one), macOS's sysctl, else what
    the platform module knows (often only the architecture)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            r = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                               text=True, timeout=5)
            if r.returncode == 0 and r.stdout.strip():
                return r.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def cpu_info() -> dict:
    """{"isa": the level in use, "supported": the levels this CPU runs, "cpu": its name,
    "machine": the architecture, "bf16": whether it has bfloat16 dot products}."""
    return {"isa": get_isa(), "supported": supported(), "cpu": _cpu_name(),
            "machine": platform.machine(), "bf16": _kernels.bf16_supported()}


def _init_from_env() -> None:
    name = os.environ.get("SIMCORE_ISA", "").strip()
    if name:
        try:
            set_isa(name)
        except ValueError as e:
            raise ValueError(f"SIMCORE_ISA={name}: {e}") from None
