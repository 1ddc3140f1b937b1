"""Which BLAS the kernels call, and how many threads everything uses.

By default simcore calls the OpenBLAS bundled in SciPy's wheels, through the
`sgemm` pointer SciPy exports in `scipy.linalg.cython_blas` (scikit-learn's
route): nothing is linked at build time. `use_blas(path)` (or the environment
variable SIMCORE_BLAS=path at import) switches the same kernels to any shared
library exporting `cblas_sgemm` or Fortran `sgemm_` with 32-bit integers
(Debian's OpenBLAS, BLIS, reference BLAS, MKL's libmkl_rt, ...).

Threads: BLAS calls use the BLAS's own threads; our C loops use OpenMP. The two
never nest. `set_threads(n)` sets both (through threadpoolctl, so it composes
with code that already uses threadpoolctl).
"""
from __future__ import annotations

import ctypes
import os

from simcore import _kernels

_state = {"library": None, "interface": None, "handle": None}


def _scipy_sgemm() -> int:
    from scipy.linalg import cython_blas

    capsule = cython_blas.__pyx_capi__["sgemm"]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get_ptr(capsule, get_name(capsule))


def use_scipy_blas() -> None:
    """Route the kernels to SciPy's bundled OpenBLAS (the default)."""
    _kernels.blas_set(_scipy_sgemm(), False)
    _state.update(library="scipy", interface="sgemm (scipy.linalg.cython_blas)", handle=None)


def use_blas(path: str) -> None:
    """Route the kernels to the BLAS shared library at `path` (or a soname)."""
    if path in ("scipy", "default", ""):
        return use_scipy_blas()
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise OSError(f"cannot load BLAS library {path!r}: {e}") from None
    for symbol, cblas in (("cblas_sgemm", True), ("sgemm_", False)):
        fn = getattr(lib, symbol, None)
        if fn is not None:
            _kernels.blas_set(ctypes.cast(fn, ctypes.c_void_p).value, cblas)
            _state.update(library=path, interface=symbol, handle=lib)
            return
    raise OSError(f"{path!r} exports neither cblas_sgemm nor sgemm_: not a BLAS library")


def _matching_pools():
    """threadpoolctl's view of the BLAS we use (best effort)."""
    from threadpoolctl import threadpool_info

    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    lib = _state["library"]
    if lib == "scipy":
        mine = [p for p in pools if "scipy" in p.get("filepath", "")]
    else:
        real = os.path.realpath(lib) if os.path.exists(lib) else lib
        mine = [p for p in pools if os.path.basename(real).split(".so")[0]
                in os.path.basename(os.path.realpath(p.get("filepath", "")))]
    return mine or []


def blas_info() -> dict:
    """The BLAS in use: library, interface, version, threading layer, threads."""
    info = {"library": _state["library"], "interface": _state["interface"],
            "version": None, "internal_api": None, "threading_layer": None,
            "architecture": None, "num_threads": None, "filepath": None,
            "kernel_threads": _kernels.get_num_threads()}
    try:
        pools = _matching_pools()
    except Exception:  # threadpoolctl missing or confused: report what we know
        pools = []
    if pools:
        p = pools[0]
        for key in ("version", "internal_api", "threading_layer", "architecture",
                    "num_threads", "filepath"):
            info[key] = p.get(key)
    return info


def set_threads(n: int) -> None:
    """Use n threads in BLAS calls and in simcore's own loops."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)  # BLAS (and any OpenMP runtime it finds)
    _kernels.set_num_threads(n)


def get_threads() -> int:
    return _kernels.get_num_threads()


def _init_from_env() -> None:
    path = os.environ.get("SIMCORE_BLAS")
    if path:
        use_blas(path)
    else:
        use_scipy_blas()
