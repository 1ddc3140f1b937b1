"""simcore: a class-conditional autoregressive pixel transformer for MNIST-sized
images, trained and sampled on the CPU by C kernels on BLAS.

    import simcore
    model = simcore.SIM(simcore.Config.preset("sprint"), seed=0)
    loss = model.train_step(tokens, lr=3e-3, muon_lr=0.02)   # tokens: uint8 [B, 784]
"""
import importlib.machinery
import importlib.util
import os
import sys
import warnings

from simcore import _sources


def _built(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, "_kernels" + suffix))
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _installed_copy():
    """The folder of the built simcore this Python would import if this unbuilt source
    folder were not in the way, or None. The import system itself is asked (every
    sys.meta_path finder: sys.path folders, user site, .pth entries, the finders of
    editable installs), with the sys.path entries that lead here left out."""
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    root = os.path.dirname(here)
    saved = sys.path[:]
    sys.path[:] = [p for p in saved if os.path.realpath(p or os.getcwd()) != root]
    try:
        for finder in sys.meta_path:
            try:
                spec = finder.find_spec("simcore", None)
            except Exception:  # a finder that cannot answer this question
                continue
            for folder in (spec and spec.submodule_search_locations) or ():
                if os.path.realpath(folder) != here and _built(folder):
                    return os.path.abspath(folder)
    finally:
        sys.path[:] = saved
    return None


def _pip_python():
    """The interpreter the `pip` on PATH installs for (its script's #! line), or None."""
    import shutil  # noqa: PLC0415  (only on this error path)
    pip = shutil.which("pip")
    try:
        with open(pip or "", "rb") as f:
            line = f.readline(512).decode(errors="replace")
    except OSError:
        return None
    python = line[2:].strip().split(" ")[0] if line.startswith("#!") else ""
    return python if "python" in os.path.basename(python) else None


def _not_built_message() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    msg = (f"{here} holds simcore's sources without their compiled kernels, and it was found "
           "first (python -m and a script's folder put the current folder on sys.path); no built "
           f"simcore is installed for this Python ({sys.executable}).")
    pip_python = _pip_python()
    if pip_python and os.path.realpath(pip_python) != os.path.realpath(sys.executable):
        msg += (f" The `pip` on your PATH installs for another Python ({pip_python}), so "
                "`pip install .` did not install it for this one.")
    return msg + (" Make one environment for both and install there: `python3 -m venv .venv && "
                  ". .venv/bin/activate && pip install .` (the README's first lines), or "
                  f"`{sys.executable} -m pip install .`.")


def _started_as_command() -> bool:
    """Whether this import is `python -m simcore.<verb>` finding its module: Python then
    holds sys.argv[0] at "-m" (its documented placeholder while the module is looked up),
    and the original command line (3.10+) names the module."""
    if sys.argv[:1] != ["-m"]:
        return False
    words = list(getattr(sys, "orig_argv", []))
    for i, word in enumerate(words):
        if word.startswith("-m"):
            module = word[2:] or (words[i + 1] if i + 1 < len(words) else "")
            return module.startswith("simcore.")
    return False


def _hand_over() -> None:
    """This is simcore/ in a clone's root, without compiled kernels, found first on sys.path
    (python -m puts the current folder there): run the installed copy in its place, if that
    copy was built from these very sources. Else raise a one-line ImportError saying what to
    do (named after this module, so that python -m prints it on one line, with no traceback).
    A src/ layout would avoid the question, at the price of the layout we keep."""
    folder = _installed_copy()
    if folder is None:
        raise ImportError(_not_built_message(), name=__name__)
    # setup.py recorded the digest of the sources it built from; a clone edited (or pulled)
    # since then must not run the old installed code without a word
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if _sources.recorded(folder) != _sources.digest(root):
        raise ImportError(f"the simcore installed in {folder} was built from other sources than "
                          f"the ones in {root}: run `pip install .` there again (or `pip install -e .` "
                          "to develop)", name=__name__)
    # Replace this module by the installed package, so that `simcore.train` and every other
    # submodule come from there (import returns sys.modules' entry).
    spec = importlib.util.spec_from_file_location(
        __name__, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[__name__] = module
    spec.loader.exec_module(module)


# An in-place build (setup.py build_ext --inplace, pip install -e .) is used as it is.
if importlib.util.find_spec("simcore._kernels") is None:
    _hand_over()
else:
    try:
        from simcore import _kernels  # noqa: F401  (the compiled extension)
    except ImportError as _err:  # pragma: no cover - depends on how it was installed
        raise ImportError(
            f"simcore's compiled kernels (simcore._kernels) failed to import: {_err}. "
            "Install the package with `pip install .` (or build in place with "
            "`python setup.py build_ext --inplace`).") from None
    from simcore import pretrained  # simcore.pretrained.info(), and SIM.pretrained() below
    from simcore._version import __version__  # noqa: F401  (simcore.__version__)
    from simcore.blas import _init_from_env as _init_blas
    from simcore.blas import blas_info, get_threads, set_threads, use_blas, use_scipy_blas
    from simcore.checkpoint import load_model as load
    from simcore.checkpoint import save
    from simcore.config import PRESETS, Config
    from simcore.cpu import _init_from_env as _init_isa
    from simcore.cpu import cpu_info, get_isa, set_isa
    from simcore.model import SIM

    # SIM.pretrained() is simcore.pretrained.load, attached here: it reads a checkpoint, and
    # checkpoint.py imports model.py, so model.py importing it would close an import circle.
    SIM.pretrained = staticmethod(pretrained.load)

    __all__ = ["Config", "PRESETS", "SIM", "blas_info", "check_environment", "cpu_info", "get_isa",
               "get_threads", "load", "save", "set_isa", "set_threads", "use_blas", "use_scipy_blas"]

    # SIMCORE_ISA and SIMCORE_BLAS are read here. A bad value must not make `import
    # simcore` fail (no CLI could then say what is wrong): the library goes on at the
    # default and warns saying so; the commands (python -m simcore.<verb>) stop instead,
    # with check_environment()'s one line, so there the warning, which would promise the
    # default, is not given.
    _ENV_ERRORS = []
    for _init, _instead in ((_init_isa, lambda: f"vector level {get_isa()}"),
                            (_init_blas, lambda: "SciPy's OpenBLAS")):
        try:
            _init()
        except ValueError as _err:
            _ENV_ERRORS.append(str(_err))
            if not _started_as_command():
                warnings.warn(f"{_err}; simcore uses {_instead()} instead", stacklevel=2)

    def check_environment() -> None:
        """Raise ValueError if SIMCORE_ISA or SIMCORE_BLAS held a value simcore could not use
        (the commands call it first, and stop)."""
        if _ENV_ERRORS:
            raise ValueError("; ".join(_ENV_ERRORS))
