"""Choosing the BLAS at run time, and reporting it."""
import ctypes.util
import glob

import numpy as np
import pytest

import simcore
from simcore import _kernels as K

SYSTEM_BLAS = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/blas/libblas.so.3")
                     + glob.glob("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0")
                     + glob.glob("/usr/lib/*/libopenblas.so.0") + glob.glob("/usr/lib/*/libblas.so.3"))


@pytest.fixture
def restore_default_blas():
    yield
    simcore.use_scipy_blas()


def test_default_blas_is_scipys_openblas_and_reports_itself():
    info = simcore.blas_info()
    assert info["library"] == "scipy"
    assert info["internal_api"] == "openblas" and info["version"]
    assert info["num_threads"] == 1  # simcore threads around it, see csrc/blas.c
    assert info["kernel_threads"] == simcore.get_threads() >= 1


def test_blas_info_says_what_runs_simcores_threads():
    # OpenMP, or in a build whose compiler had none, simcore's own pool (csrc/parallel.c)
    assert simcore.blas_info()["kernel_threading"] == K.threading_layer() in ("openmp", "pthreads")


@pytest.mark.skipif(not SYSTEM_BLAS, reason="no system BLAS (apt-get install libblas3) to switch to")
@pytest.mark.parametrize("path", SYSTEM_BLAS)
def test_another_blas_chosen_at_run_time_gives_the_same_model(path, restore_default_blas):
    cfg = simcore.Config(d_model=16, d_hidden=32, n_layers=2, n_heads=2, image_size=6)
    tokens = np.random.default_rng(0).integers(0, 256, (3, 36)).astype(np.uint8)
    tokens[:, 0] = 1
    model = simcore.SIM(cfg, seed=0)
    want = model.forward(tokens)
    simcore.use_blas(path)
    assert simcore.blas_info()["library"] == path
    np.testing.assert_allclose(model.forward(tokens), want, rtol=1e-5, atol=1e-5)
    a, b = np.ones((70, 3), np.float32), np.arange(12, dtype=np.float32).reshape(3, 4)
    out = np.empty((70, 4), np.float32)
    K.sgemm(out, a, b)
    np.testing.assert_array_equal(out, a @ b)


def test_use_blas_on_a_missing_file_names_it(restore_default_blas):
    with pytest.raises(OSError, match="no-such-blas.so"):
        simcore.use_blas("/nowhere/no-such-blas.so")


def test_use_blas_on_a_library_without_sgemm_is_refused(restore_default_blas):
    libc = ctypes.util.find_library("c")
    with pytest.raises(OSError, match="neither cblas_sgemm nor sgemm_"):
        simcore.use_blas(libc)
    assert simcore.blas_info()["library"] == "scipy"  # unchanged after the refusal


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_set_threads_rejects_non_positive_integers(bad):
    with pytest.raises(ValueError, match="threads"):
        simcore.set_threads(bad)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("M,N,L", [(24, 40, 4096), (128, 16, 20000), (40, 24, 300)])
def test_a_long_reduction_split_across_threads_gives_alpha_at_b_plus_beta_c(M, N, L, threads):
    """op(A) = A^T with K far above M and N (a weight gradient) is split along K, one
    partial product per thread, then summed: the same product as one thread's."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((L, M)).astype(np.float32)
    b = rng.standard_normal((L, N)).astype(np.float32)
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    want = 0.7 * a.astype(np.float64).T @ b + 0.5 * c0
    old = simcore.get_threads()
    simcore.set_threads(threads)
    try:
        out = c0.copy()
        K.sgemm(out, a, b, True, False, 0.7, 0.5)
    finally:
        simcore.set_threads(old)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * np.sqrt(L))


def test_the_thread_count_set_in_one_python_thread_holds_in_every_other():
    """OpenMP keeps its thread count per thread; simcore's is the process's, so that a
    model called from a worker thread splits its products (and rounds them) as the
    thread that chose the count does."""
    import threading

    before = simcore.get_threads()
    try:
        for n in (1, 2):
            simcore.set_threads(n)
            seen = []
            t = threading.Thread(target=lambda: seen.append(K.get_num_threads()))
            t.start()
            t.join()
            assert seen == [n]
    finally:
        simcore.set_threads(before)
