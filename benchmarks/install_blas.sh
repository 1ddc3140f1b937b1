#!/usr/bin/env bash
# Install the BLAS builds that benchmarks/bench_blas.py compares (Debian/Ubuntu + pip):
#   Debian OpenBLAS, pthreads and OpenMP builds   libopenblas0-pthread, libopenblas0-openmp
#   BLIS                                          libblis4-pthread
#   the reference BLAS (netlib)                   libblas3
#   Intel MKL (libmkl_rt.so.2 under sys.prefix/lib)  pip install mkl
# simcore itself needs none of them: by default it calls the OpenBLAS in SciPy's wheels.
#
# Note: installing a Debian BLAS registers it with update-alternatives as the
# system's libblas.so.3; programs linked to that name may switch library.
# The benchmark loads each one by its own path and is not affected.
#
#   bash benchmarks/install_blas.sh              # apt and pip
#   PYTHON=/path/to/python bash benchmarks/install_blas.sh   # pip into that interpreter
#   bash benchmarks/install_blas.sh --no-apt     # pip only (no root needed)
#   bash benchmarks/install_blas.sh --no-pip     # apt only
set -euo pipefail

apt=1 pip=1
for arg in "$@"; do
    case "$arg" in
        --no-apt) apt=0 ;;
        --no-pip) pip=0 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown option: $arg (try --help)" >&2; exit 2 ;;
    esac
done

if [ "$apt" = 1 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update
    $sudo apt-get install -y libopenblas0-pthread libopenblas0-openmp libblis4-pthread libblas3
fi
if [ "$pip" = 1 ]; then
    "${PYTHON:-python3}" -m pip install mkl
fi
echo "done: python benchmarks/bench_blas.py lists what it finds"
