"""Which BLAS the kernels call, and how many threads everything uses.

By default simcore calls the OpenBLAS bundled in SciPy's wheels, through the
`sgemm` pointer SciPy exports in `scipy.linalg.cython_blas` (scikit-learn's
route): nothing is linked at build time. `use_blas(path)` (or the environment
variable SIMCORE_BLAS=path at import) switches the same kernels to any shared
library exporting `cblas_sgemm` or Fortran `sgemm_` with 32-bit integers
(Debian's OpenBLAS, BLIS, reference BLAS, MKL's libmkl_rt, ...).

Threads: one pool, simcore's: OpenMP's threads, or in a build whose compiler had no
OpenMP (Apple's clang) a pool of its own on pthreads (csrc/parallel.c;
blas_info()["kernel_threading"] says which). The BLAS library simcore calls is
set to one thread (through threadpoolctl), and csrc/blas.c splits each large
product into panels, one single-threaded sgemm per thread; our element-wise and
attention loops use the same threads. Two pools spinning on the same cores cost
20-40% of a step here. `set_threads(n)` (or OMP_NUM_THREADS, in either build) sets
the count.
Note that this also makes that BLAS single-threaded for other code in the
process that calls the same library (SciPy's, by default).
"""
from __future__ import annotations

import ctypes
import os
import warnings

from scipy.linalg import cython_blas
from threadpoolctl import ThreadpoolController, threadpool_info

from simcore import _kernels
from simcore.resources import max_threads

_state = {"library": None, "interface": None, "handle": None, "filepath": None}


def _scipy_sgemm() -> int:
    capsule = cython_blas.__pyx_capi__["sgemm"]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get_ptr(capsule, get_name(capsule))


def use_scipy_blas() -> None:
    """Route the kernels to SciPy's bundled OpenBLAS (the default)."""
    fn = _scipy_sgemm()
    _kernels.blas_set(fn, False)
    _state.update(library="scipy", interface="sgemm (scipy.linalg.cython_blas)", handle=None,
                  filepath=_library_of(fn))
    _single_threaded_blas()


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
            address = ctypes.cast(fn, ctypes.c_void_p).value
            _kernels.blas_set(address, cblas)
            _state.update(library=path, interface=symbol, handle=lib, filepath=_library_of(address))
            _single_threaded_blas()
            return
    raise OSError(f"{path!r} exports neither cblas_sgemm nor sgemm_: not a BLAS library")


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _library_of(address: int) -> str | None:
    """The shared object that holds `address` (dladdr), e.g. the sgemm we call."""
    for name in (None, "libdl.so.2"):
        try:
            dladdr = ctypes.CDLL(name).dladdr
        except (OSError, AttributeError):
            continue
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        info = _DlInfo()
        if dladdr(address, ctypes.byref(info)) and info.dli_fname:
            return os.path.realpath(info.dli_fname.decode())
    return None


def _matching_pools():
    """threadpoolctl's entries for the library whose sgemm we call."""
    mine = _state.get("filepath")
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    exact = [p for p in pools if os.path.realpath(p.get("filepath", "")) == mine]
    if exact or _state["library"] != "scipy":
        return exact
    # SciPy's pointer is a wrapper in cython_blas; the library behind it is the
    # OpenBLAS bundled in scipy.libs (wheels), else the only BLAS loaded.
    bundled = [p for p in pools if os.sep + "scipy.libs" + os.sep in p.get("filepath", "")]
    return bundled or (pools if len(pools) == 1 else [])


def _single_threaded_blas() -> None:
    """Set the BLAS we call to one thread: csrc/blas.c does the threading."""
    try:
        paths = {p["filepath"] for p in _matching_pools()}
        if paths:
            ThreadpoolController().select(filepath=list(paths)).limit(limits=1)
    except Exception:  # an unknown library: it may keep its own threads
        pass


def blas_info() -> dict:
    """The BLAS in use: library, interface, version, threading layer, threads; and of
    simcore's own kernels, their threads, what runs them ("kernel_threading": "openmp",
    or "pthreads" in a build without OpenMP) and their vector level ("isa")."""
    info = {"library": _state["library"], "interface": _state["interface"],
            "version": None, "internal_api": None, "threading_layer": None,
            "architecture": None, "num_threads": None, "filepath": _state["filepath"],
            "kernel_threads": _kernels.get_num_threads(),
            "kernel_threading": _kernels.threading_layer(), "isa": _kernels.isa_get()}
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
    """Use n threads in simcore's kernels (the BLAS stays single-threaded inside them)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    if n > max_threads():
        raise ValueError(f"threads must be at most {max_threads()} (4 per CPU of this machine's "
                         f"{os.cpu_count()}), got {n}")
    _kernels.set_num_threads(n)
    _single_threaded_blas()


def get_threads() -> int:
    return _kernels.get_num_threads()


def _init_from_env() -> None:
    if _kernels.get_num_threads() > max_threads():  # OMP_NUM_THREADS=100000
        warnings.warn(f"OMP_NUM_THREADS asks for {_kernels.get_num_threads()} threads; simcore uses "
                      f"at most {max_threads()}", stacklevel=3)
        _kernels.set_num_threads(max_threads())
    path = os.environ.get("SIMCORE_BLAS")
    if path:
        try:
            use_blas(path)
        except OSError as e:
            use_scipy_blas()
            raise ValueError(f"SIMCORE_BLAS={path}: {e}") from None
    else:
        use_scipy_blas()
