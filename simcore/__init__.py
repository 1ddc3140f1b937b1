"""simcore: a class-conditional autoregressive pixel transformer for MNIST-sized
images, trained and sampled on the CPU by C kernels on BLAS.

    import simcore
    model = simcore.SIM(simcore.Config.preset("small"), seed=0)
    loss = model.train_step(tokens, lr=1e-3)     # tokens: uint8 [B, 784]
"""
import importlib.machinery
import importlib.util
import os
import sys
import warnings


def _installed_copy():
    """The folder of another simcore on sys.path that has its compiled kernels, or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        folder = os.path.abspath(os.path.join(entry or os.getcwd(), "simcore"))
        if folder != here and any(os.path.isfile(os.path.join(folder, "_kernels" + suffix))
                                  for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            return folder
    return None


def _hand_over_to(folder):
    """Replace this module by the simcore package in `folder`, so that `simcore.train`
    and every other submodule come from there (import returns sys.modules' entry)."""
    spec = importlib.util.spec_from_file_location(
        __name__, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[__name__] = module
    spec.loader.exec_module(module)


# `pip install . && python -m simcore.train`, typed in the root of a clone, finds this
# source folder first (python -m puts the current folder on sys.path) and it has no
# compiled kernels. A src/ layout would avoid it, at the price of the layout we keep;
# instead an unbuilt source folder hands over, whole, to the installed copy, the one
# `pip install .` just built from these very sources. A built source folder (setup.py
# build_ext --inplace) is used as it is.
_SOURCE_TREE_WITHOUT_BUILD = importlib.util.find_spec("simcore._kernels") is None
if _SOURCE_TREE_WITHOUT_BUILD and _installed_copy():
    _hand_over_to(_installed_copy())
else:
    try:
        from simcore import _kernels  # noqa: F401  (the compiled extension)
    except ImportError as _err:  # pragma: no cover - depends on how it was installed
        raise ImportError(
            f"simcore's compiled kernels (simcore._kernels) failed to import: {_err}. "
            "Install the package with `pip install .` (or build in place with "
            "`python setup.py build_ext --inplace`).") from None
    from simcore._version import __version__  # noqa: F401  (simcore.__version__)
    from simcore.blas import _init_from_env as _init_blas
    from simcore.blas import blas_info, get_threads, set_threads, use_blas, use_scipy_blas
    from simcore.checkpoint import load_model as load
    from simcore.checkpoint import save
    from simcore.config import PRESETS, Config
    from simcore.cpu import _init_from_env as _init_isa
    from simcore.cpu import cpu_info, get_isa, set_isa
    from simcore.model import SIM
    __all__ = ["Config", "PRESETS", "SIM", "blas_info", "check_environment", "cpu_info", "get_isa",
               "get_threads", "load", "save", "set_isa", "set_threads", "use_blas", "use_scipy_blas"]

    # SIMCORE_ISA and SIMCORE_BLAS are read here. A bad value must not make `import
    # simcore` fail (no CLI could then say what is wrong): it warns, keeps the default,
    # and check_environment(), which every CLI calls first, turns it into an error.
    _ENV_ERRORS = []
    for _init in (_init_isa, _init_blas):
        try:
            _init()
        except ValueError as _err:
            _ENV_ERRORS.append(str(_err))
            warnings.warn(str(_err), stacklevel=2)

    def check_environment() -> None:
        """Raise ValueError if SIMCORE_ISA or SIMCORE_BLAS held a value simcore could not use."""
        if _ENV_ERRORS:
            raise ValueError("; ".join(_ENV_ERRORS))
