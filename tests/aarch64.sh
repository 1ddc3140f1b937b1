#!/usr/bin/env bash
# simcore on AArch64, from an x86-64 Debian machine: cross-build the package for arm64
# Linux (its NEON level) and run its kernel, model and sampling tests and a 3-step
# `python -m simcore.train` under qemu-user, in an arm64 Debian (bookworm) tree made
# from Debian's own packages. Correctness only: emulated time means nothing.
#
#   bash tests/aarch64.sh
#
# Needs root for its first run (apt-get installs mmdebstrap, qemu-user-static and
# gcc-aarch64-linux-gnu when missing; mmdebstrap extracts the tree), the machine's own
# Debian apt sources, and PyPI (the host's build tools, Cython and setuptools, and the
# arm64 wheel of safetensors, which bookworm does not package). The tree and the host's
# tools are kept in $SIMCORE_AARCH64_CACHE (default ~/.cache/simcore-aarch64), outside
# the clone, and reused; delete that folder to start afresh.
#
# What runs under emulation: tests/test_kernels.py, test_block.py, test_model.py,
# test_generate.py and test_cpu.py, without those marked `slow` (they start
# subprocesses, which would need binfmt_misc to run arm64 programs, or train for
# minutes); the PyTorch parity tests skip (no torch in the tree). Then a 3-step
# training run of a narrow model with real MNIST ($SIMCORE_DATA, or ../shared/mnist
# beside the clone) or, without it, a small synthetic set in MNIST's format. (Under
# qemu-user, cpu_info()'s "cpu" names the host's CPU: its /proc/cpuinfo shows through.)
# The cross compiler has OpenMP; SIMCORE_OPENMP=0 bash tests/aarch64.sh tests the
# pthread pool there instead.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${SIMCORE_AARCH64_CACHE:-$HOME/.cache/simcore-aarch64}
tree=$cache/bookworm-arm64   # the arm64 Debian tree (qemu -L)
host=$cache/host-venv        # the host's Python with the build tools
mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== tools: a cross compiler, qemu-user, mmdebstrap =="
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
aarch64-linux-gnu-gcc --version | head -1
qemu-aarch64-static --version | head -1

echo "== the arm64 Debian tree (made once, then reused): $tree =="
if [ ! -f "$tree/.simcore-ready" ]; then
  rm -rf "$tree"
  # the machine's own Debian sources (deb822 files, else the one-line list), on stdin
  if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
    cat /etc/apt/sources.list.d/*.sources >"$work/sources"
  else
    grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null >"$work/sources"
  fi
  mmdebstrap --quiet --variant=extract --arch=arm64 \
    --include=python3,python3-dev,python3-numpy,python3-scipy,python3-pytest,python3-threadpoolctl,python3-pil \
    bookworm "$tree" - <"$work/sources"
  # the extract variant runs no maintainer scripts, so the alternatives that name
  # libblas.so.3 and liblapack.so.3 for NumPy and SciPy are not there: link them
  lib=$tree/usr/lib/aarch64-linux-gnu
  ln -sf blas/libblas.so.3 "$lib/libblas.so.3"
  ln -sf lapack/liblapack.so.3 "$lib/liblapack.so.3"
  touch "$tree/.simcore-ready"
fi
run() {  # the tree's python3, emulated; nothing of the host's user site
  PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 qemu-aarch64-static -L "$tree" "$tree/usr/bin/python3" "$@"
}
run -c "import platform, sys, numpy, scipy; print(platform.machine(), sys.version.split()[0], 'numpy', numpy.__version__, 'scipy', scipy.__version__)"

echo "== the host's build tools, and safetensors for arm64 (PyPI) =="
if [ ! -x "$host/bin/python" ]; then
  python3 -m venv "$host"
  "$host/bin/pip" install -q "Cython>=3.0" "setuptools>=77" wheel
fi
if [ ! -d "$cache/site/safetensors" ]; then
  pyver=$(run -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
  "$host/bin/pip" download -q --only-binary=:all: --no-deps --platform manylinux2014_aarch64 \
    --python-version "$pyver" --implementation cp -d "$work/wheels" "safetensors>=0.4"
  "$host/bin/python" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" \
    "$cache/site" "$work"/wheels/*.whl
fi

echo "== cross-build simcore for aarch64 (CC, LDSHARED, _PYTHON_HOST_PLATFORM) =="
build=$work/simcore   # the clone's sources, without its builds
mkdir -p "$build"
tar -C "$repo" --exclude=./.venv --exclude=./runs --exclude=./build --exclude='*.so' \
  -cf - setup.py pyproject.toml MANIFEST.in README.md simcore csrc tests | tar -C "$build" -xf -
ext_suffix=$(run -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
include=$(run -c "import sysconfig; print(sysconfig.get_paths()['include'])")  # under $tree
(cd "$build" && CC=aarch64-linux-gnu-gcc LDSHARED="aarch64-linux-gnu-gcc -shared" \
   _PYTHON_HOST_PLATFORM=linux-aarch64 SETUPTOOLS_EXT_SUFFIX="$ext_suffix" \
   CFLAGS="-I$include -idirafter $tree/usr/include" \
   "$host/bin/python" setup.py -q build_ext --inplace)
so=$(ls "$build"/simcore/_kernels*.so)
echo "built $(basename "$so"): $(LC_ALL=C readelf -h "$so" | sed -n 's/^ *Machine: *//p')"

cd "$build"
export PYTHONPATH=$build:$cache/site
unset SIMCORE_REQUIRE_TORCH  # (set by .ci/run) no torch in the tree: the parity tests skip here
echo "== under qemu-aarch64: the machine, cpu_info(), the threads =="
run -c "import platform, simcore
print('platform.machine():', platform.machine())
print('simcore.cpu_info():', simcore.cpu_info())
print('kernel threads:', simcore.blas_info()['kernel_threading'], simcore.get_threads())" | tee "$work/info.txt"
grep -q "'isa': 'neon'" "$work/info.txt"

echo "== under qemu-aarch64: kernel, model and sampling tests (not slow) =="
for d in "${SIMCORE_DATA:-}" "$repo/../shared/mnist"; do
  if [ -n "$d" ] && [ -f "$d/t10k-images-idx3-ubyte.gz" ]; then
    export SIMCORE_DATA=$(cd "$d" && pwd); break
  fi
done
set +e
run -m pytest -q -p no:cacheprovider -m "not slow" tests/test_kernels.py tests/test_block.py \
  tests/test_model.py tests/test_generate.py tests/test_cpu.py 2>&1 | tee "$work/pytest.txt"
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] || { echo "aarch64 tests failed"; exit 1; }

echo "== under qemu-aarch64: python -m simcore.train --steps 3 =="
if [ -z "${SIMCORE_DATA:-}" ]; then  # MNIST's format, random pixels: enough for 3 steps
  export SIMCORE_DATA=$work/mnist
  "$host/bin/python" - "$SIMCORE_DATA" <<'EOF'
import gzip, os, random, struct, sys
out = sys.argv[1]
os.makedirs(out)
rng = random.Random(0)
for split, n in (("train", 512), ("t10k", 128)):
    with gzip.open(os.path.join(out, f"{split}-images-idx3-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + rng.randbytes(n * 28 * 28))
    with gzip.open(os.path.join(out, f"{split}-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + bytes(rng.randrange(10) for _ in range(n)))
EOF
fi
echo "SIMCORE_DATA=$SIMCORE_DATA"
# a narrow model and few evaluation images: the default one's evaluations and sample grid
# take many minutes emulated; the command, data, checkpoint and evaluation paths are the same
run -m simcore.train --steps 3 --d-model 32 --d-hidden 64 --n-layers 2 --n-heads 2 \
  --eval-subset 8 --final-eval 8 --samples-per-class 1 --no-progress --out "$work/run"
test -s "$work/run/final.json"

echo "== aarch64 summary =="
cat "$work/info.txt"
echo "pytest: $(tail -n 1 "$work/pytest.txt")"
"$host/bin/python" -c "import json, sys; r = json.load(open(sys.argv[1]))
print(f\"train: {r['step']} steps, test bits/dim {r['final_test_bits']:.4f} on {r['final_eval_images']} images\")" \
  "$work/run/final.json"
