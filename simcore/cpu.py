"""Which vector level the kernels run at, and what this CPU can run.

The C kernels are built once per x86 vector level (AVX-512, AVX2 + FMA and the
x86-64 baseline; see csrc/dispatch.c) and the best level this CPU runs is used
by default. Capping it, as numpy's NPY_DISABLE_CPU_FEATURES, oneDNN's
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

from simcore import _kernels

LEVELS = _kernels.ISA_LEVELS  # ("baseline", "avx2", "avx512"), lowest first


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
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
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
