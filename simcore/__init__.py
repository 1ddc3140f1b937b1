"""simcore: a class-conditional autoregressive pixel transformer for MNIST-sized
images, trained and sampled on the CPU by C kernels on BLAS.

    import simcore
    model = simcore.SIM(simcore.Config.preset("small"), seed=0)
    loss = model.train_step(tokens, lr=1e-3)     # tokens: uint8 [B, 784]
"""
try:
    from simcore import _kernels  # noqa: F401  (the compiled extension)
except ImportError as _err:  # pragma: no cover - depends on how it was installed
    raise ImportError(
        f"simcore's compiled kernels (simcore._kernels) failed to import: {_err}. "
        "Install the package with `pip install .`, or build in place with "
        "`python setup.py build_ext --inplace`. Running from the source folder "
        "without a build imports the unbuilt sources: change directory.") from None
from simcore.blas import blas_info, get_threads, set_threads, use_blas, use_scipy_blas
from simcore.blas import _init_from_env as _init_blas
from simcore.cpu import _init_from_env as _init_isa
from simcore.cpu import cpu_info, get_isa, set_isa
from simcore.config import PRESETS, Config
from simcore.model import SIM

__version__ = "0.1.0"
__all__ = ["Config", "PRESETS", "SIM", "blas_info", "cpu_info", "get_isa", "get_threads",
           "set_isa", "set_threads", "use_blas", "use_scipy_blas"]

_init_isa()
_init_blas()
