"""Build the C kernels (csrc/) and their Cython binding into simcore._kernels.

Build switches (environment variables, all off by default):
  SIMCORE_SANITIZE=1  compile with -fsanitize=address,undefined (for the CI check)
  SIMCORE_NATIVE=1    add -march=native (a local experiment; never shipped)
BLAS is not linked: it is found at run time (see simcore/blas.py).
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

compile_args = ["-O3", "-std=gnu11", "-fopenmp", "-Wall", "-Wno-unused-function"]
link_args = ["-fopenmp"]
if os.environ.get("SIMCORE_SANITIZE") == "1":
    compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g",
                     "-fno-sanitize-recover=undefined", "-DSIMCORE_NO_CLONES"]
    link_args += ["-fsanitize=address,undefined"]
if os.environ.get("SIMCORE_NATIVE") == "1":
    compile_args += ["-march=native"]

ext = Extension(
    "simcore._kernels",
    sources=["simcore/_kernels.pyx"] + sorted(glob.glob("csrc/*.c")),
    include_dirs=["csrc"],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

setup(ext_modules=cythonize([ext], language_level=3))
