"""Build the C kernels (csrc/) and their Cython binding into simcore._kernels.

The files of vectorised kernels are compiled once per x86 vector level, each
with that level's flags (see csrc/dispatch.c), and linked into the one
extension; csrc/dispatch.c picks a level at run time. This is how PyTorch
builds a kernel file once per CPU_CAPABILITY; it needs no -march=native, so one
build runs, and runs fast, on any x86-64 CPU. Elsewhere only the baseline is built.

Build switch (environment variable, off by default):
  SIMCORE_SANITIZE=1  compile with -fsanitize=address,undefined (for the CI check)
BLAS is not linked: it is found at run time (see simcore/blas.py).
"""
import glob
import os
import platform
import runpy

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

compile_args = ["-O3", "-std=gnu11", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-function"]
link_args = ["-fopenmp"]
if os.environ.get("SIMCORE_SANITIZE") == "1":
    compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g",
                     "-fno-sanitize-recover=undefined"]
    link_args += ["-fsanitize=address,undefined"]

# The files of csrc/kernels.def's kernels, compiled once per level (simcore.h gives each
# build its own symbol names). Those without vec.h gain too, from the compiler's own
# vectorisation at the level's width (1 thread, AMD EPYC Zen 4, baseline/avx512 time:
# rmsnorm 1.5x, embedding 1.3x, sampling 1.16x). adamw.c and muon.c gain no speed
# (AdamW is memory-bound, Muon is BLAS: 1.0x) but stay per level all the same: the
# compiler contracts their a * b + c into FMAs at the AVX2 and AVX-512 levels, so
# building them once would change every fixed-seed run's weights in the last bits.
PER_LEVEL = ["embedding", "rmsnorm", "linear", "mlp", "attention", "decode", "block", "xent",
             "sample", "adamw", "muon"]
ONCE = ["blas", "dispatch"]
# Level -> flags. x86-64-v4 and v3 spelled as features, which older compilers know too;
# dispatch.c checks exactly these features before it lets a level run.
X86_LEVELS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512cd",
               "-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mf16c"],
    "avx2": ["-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mf16c"],
    "baseline": [],
}
# csrc/bf16.c, compiled once: on x86 with AVX512_BF16's flags (it checks the CPU at run
# time), elsewhere without them (its entry points then say the CPU cannot).
BF16_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma"]
X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
LEVELS = X86_LEVELS if X86 else {"baseline": []}


class build_per_level(build_ext):
    """build_ext that first compiles PER_LEVEL once per level into objects of
    their own (build_temp/<level>/), then links them into the extension."""

    def build_extension(self, ext):
        objects = []
        for level, flags in LEVELS.items():
            objects += self.compiler.compile(
                [f"csrc/{name}.c" for name in PER_LEVEL],
                output_dir=os.path.join(self.build_temp, level),
                macros=[("SC_ISA_SUFFIX", f"_{level}")],
                include_dirs=["csrc"],
                extra_postargs=compile_args + flags,
                debug=self.debug,
            )
        objects += self.compiler.compile(
            ["csrc/bf16.c"], output_dir=os.path.join(self.build_temp, "bf16"), include_dirs=["csrc"],
            extra_postargs=compile_args + (BF16_FLAGS if X86 else []), debug=self.debug)
        ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


ext = Extension(
    "simcore._kernels",
    sources=["simcore/_kernels.pyx"] + [f"csrc/{name}.c" for name in ONCE],
    include_dirs=["csrc"],
    # every C file and header: the per-level objects are not in `sources`, and a
    # change to them must still relink the extension
    depends=sorted(glob.glob("csrc/*.c") + glob.glob("csrc/*.h") + glob.glob("csrc/*.def")),
    define_macros=[("SC_X86_LEVELS", "1")] if X86 else [],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)


class build_py_recording_sources(build_py):
    """build_py that also writes simcore/_build_info.py into the build (not into the tree):
    the digest of the sources built. Run from a clone's root, an unbuilt simcore/ hands over
    to the installed copy only if that digest is its own (simcore/__init__.py)."""

    def run(self):
        super().run()
        root = os.path.dirname(os.path.abspath(__file__))
        sources = runpy.run_path(os.path.join(root, "simcore", "_sources.py"))  # simcore is not built yet
        self.mkpath(os.path.join(self.build_lib, "simcore"))
        path = os.path.join(self.build_lib, "simcore", sources["RECORD"])
        with open(path, "w", encoding="utf-8") as f:
            f.write(sources["record"](sources["digest"](root)))


setup(ext_modules=cythonize([ext], language_level=3),
      cmdclass={"build_ext": build_per_level, "build_py": build_py_recording_sources})
