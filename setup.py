"""Build the C kernels (csrc/) and their Cython binding into simcore._kernels.

The files of vectorised kernels are compiled once per vector level of the target,
each with that level's flags (see csrc/dispatch.c), and linked into the one
extension; csrc/dispatch.c picks a level at run time. This is how PyTorch builds a
kernel file once per CPU_CAPABILITY; it needs no -march=native, so one build runs,
and runs fast, on any CPU of its architecture.

Two questions are put to the compiler itself (the one in CC, as for every file), not
to the machine this runs on, so that a cross build (setuptools with CC, LDSHARED
and _PYTHON_HOST_PLATFORM, as crossenv and cibuildwheel set them) gets its
target's answers:
  - the target: x86-64 gets three levels (baseline, AVX2, AVX-512), AArch64 one
    (NEON), anything else the baseline alone;
  - OpenMP: a small program is compiled and linked with -fopenmp, as scikit-learn's
    build checks. Without it (Apple's clang, Debian's clang without libomp) the
    threads are a pool of simcore's own on pthreads (csrc/parallel.c), and
    simcore.blas_info()["kernel_threading"] says "pthreads" instead of "openmp".

Build switches (environment variables, off by default):
  SIMCORE_SANITIZE=1  compile with -fsanitize=address,undefined (for the CI check)
  SIMCORE_OPENMP=0    build with the pthread pool even where the compiler has OpenMP
  SIMCORE_OPENMP=1    fail unless the compiler has OpenMP
BLAS is not linked: it is found at run time (see simcore/blas.py).
"""
import contextlib
import glob
import os
import runpy
import sys
import sysconfig
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

compile_args = ["-O3", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-function"]
link_args = []
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
ONCE = ["blas", "dispatch", "parallel"]
# Target -> its levels (name -> flags), and the macro that tells dispatch.c which it has.
# x86-64-v4 and v3 spelled as features, which older compilers know too; dispatch.c
# checks exactly these features before it lets a level run. NEON (Advanced SIMD) is
# in every AArch64 CPU and in the compilers' default -march=armv8-a: no flags.
TARGETS = {
    "x86": ({"avx512": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512cd",
                        "-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mf16c"],
             "avx2": ["-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mf16c"],
             "baseline": []}, "SC_X86_LEVELS"),
    "aarch64": ({"neon": []}, "SC_NEON_LEVEL"),
    "other": ({"baseline": []}, None),
}
# csrc/bf16.c, compiled once: for x86 with AVX512_BF16's flags (it checks the CPU at run
# time), elsewhere without them (its entry points then say the CPU cannot).
BF16_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma"]
TARGET_PROBE = """
#if defined(__x86_64__) || defined(__i386__)
simcore_target = "x86"
#elif defined(__aarch64__)
simcore_target = "aarch64"
#else
simcore_target = "other"
#endif
"""
OPENMP_PROBE = """
#include <omp.h>
int main(void) {
    int n = 0;
#pragma omp parallel reduction(+ : n)
    n += omp_get_num_threads() > 0;
    return n > 0 ? 0 : 1;
}
"""


def _platform_target() -> str:
    """The target by the platform tag (honours _PYTHON_HOST_PLATFORM): the fallback."""
    plat = sysconfig.get_platform().lower()
    if plat.endswith(("x86_64", "amd64", "i686")):
        return "x86"
    if plat.endswith(("aarch64", "arm64")):
        return "aarch64"
    return "other"


@contextlib.contextmanager
def _quiet_stderr():
    """The probes' compiler errors are answers (no omp.h), not faults: out of the log."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class build_per_level(build_ext):
    """build_ext that asks the compiler for its target and for OpenMP, then compiles
    PER_LEVEL once per level of that target into objects of their own
    (build_temp/<level>/), and links them into the extension."""

    def _target(self, tmp) -> str:
        """What the compiler builds for: its predefined macros, preprocessed."""
        src, out = os.path.join(tmp, "target.c"), os.path.join(tmp, "target.i")
        with open(src, "w") as f:
            f.write(TARGET_PROBE)
        try:
            self.compiler.preprocess(src, output_file=out)
            with open(out) as f:
                for line in f:  # (string literals: never taken for macros)
                    if line.startswith("simcore_target"):
                        return line.split('"')[1]
        except Exception:  # no preprocessor (or several -arch at once): the platform tag
            pass
        return _platform_target()

    def _has_openmp(self, tmp) -> bool:
        """Whether a program with omp.h compiles and links with -fopenmp."""
        src = os.path.join(tmp, "openmp.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        try:
            objects = self.compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
            self.compiler.link_executable(objects, "openmp", output_dir=tmp,
                                          extra_postargs=["-fopenmp"])
        except Exception:  # CompileError, LinkError
            return False
        return True

    def build_extension(self, ext):
        wanted = os.environ.get("SIMCORE_OPENMP", "")
        with tempfile.TemporaryDirectory() as tmp, _quiet_stderr():
            target = self._target(tmp)
            openmp = wanted != "0" and self._has_openmp(tmp)
        if wanted == "1" and not openmp:
            raise RuntimeError("SIMCORE_OPENMP=1, but this compiler cannot build an OpenMP "
                               "program with -fopenmp (no omp.h or no OpenMP runtime)")
        levels, macro = TARGETS[target]
        threads = ["-fopenmp"] if openmp else ["-pthread"]
        how = ("OpenMP" if openmp else "simcore's pthread pool (SIMCORE_OPENMP=0)" if wanted == "0"
               else "simcore's pthread pool (this compiler has no OpenMP)")
        print(f"simcore: building for {target} (levels {', '.join(levels)}); threads: {how}")
        ext.extra_compile_args = compile_args + threads
        ext.extra_link_args = link_args + threads
        ext.define_macros = list(ext.define_macros or []) + ([(macro, "1")] if macro else [])
        objects = []
        for level, flags in levels.items():
            objects += self.compiler.compile(
                [f"csrc/{name}.c" for name in PER_LEVEL],
                output_dir=os.path.join(self.build_temp, level),
                macros=[("SC_ISA_SUFFIX", f"_{level}")],
                include_dirs=["csrc"],
                extra_postargs=ext.extra_compile_args + flags,
                debug=self.debug,
            )
        objects += self.compiler.compile(
            ["csrc/bf16.c"], output_dir=os.path.join(self.build_temp, "bf16"), include_dirs=["csrc"],
            extra_postargs=ext.extra_compile_args + (BF16_FLAGS if target == "x86" else []),
            debug=self.debug)
        ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


ext = Extension(
    "simcore._kernels",
    sources=["simcore/_kernels.pyx"] + [f"csrc/{name}.c" for name in ONCE],
    include_dirs=["csrc"],
    # every C file and header: the per-level objects are not in `sources`, and a
    # change to them must still relink the extension
    depends=sorted(glob.glob("csrc/*.c") + glob.glob("csrc/*.h") + glob.glob("csrc/*.def")),
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
