/* blas.c: the single door to BLAS, and our own thread count.
 *
 * Nothing is linked at build time. Python registers a function pointer at import:
 * by default SciPy's OpenBLAS `sgemm` (from scipy.linalg.cython_blas, as
 * scikit-learn does), or any library's `sgemm_` / `cblas_sgemm` chosen at run
 * time (simcore.use_blas). The pointer is one of csrc/'s three globals (with the
 * thread count below and dispatch.c's vector level): the BLAS is a process-wide
 * choice, like the library itself, and threading it through every kernel signature
 * would add noise to all of them.
 *
 * Row-major C = op(A) @ op(B) is computed by the column-major sgemm as
 * C^T = op(B)^T @ op(A)^T: swap the operands, keep the transposition flags.
 *
 * Threads: one pool, ours. The BLAS is kept single-threaded (simcore/blas.py
 * sets it so) and a large product is split into row (or column) panels of C,
 * one per OpenMP thread, each a single-threaded sgemm. Two pools (OpenBLAS's
 * pthreads and our OpenMP) on the same cores spin against each other between
 * calls; measured here that cost 20-40% of a training step.
 */
#include "simcore.h"
#include <stdlib.h>
#include <limits.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef void (*f77_sgemm_t)(const char *, const char *, const int *, const int *,
                            const int *, const float *, const float *, const int *,
                            const float *, const int *, const float *, float *,
                            const int *);
typedef void (*cblas_sgemm_t)(int, int, int, int, int, int, float, const float *,
                              int, const float *, int, float, float *, int);

enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };

static void *g_sgemm = NULL;
static int g_kind = SC_BLAS_F77;

int sc_blas_set(void *fn, int kind) {
    if (kind != SC_BLAS_F77 && kind != SC_BLAS_CBLAS) return SC_ERR_BAD_ARG;
    g_kind = kind;
    g_sgemm = fn;
    return SC_OK;
}

static void sgemm1(int transA, int transB, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float beta,
                   float *C, int ldc) {
    if (g_kind == SC_BLAS_CBLAS) {
        ((cblas_sgemm_t)g_sgemm)(CBLAS_ROW_MAJOR, transA ? CBLAS_TRANS : CBLAS_NO_TRANS,
                                 transB ? CBLAS_TRANS : CBLAS_NO_TRANS, M, N, K, alpha,
                                 A, lda, B, ldb, beta, C, ldc);
    } else {
        const char ta = transA ? 'T' : 'N', tb = transB ? 'T' : 'N';
        ((f77_sgemm_t)g_sgemm)(&tb, &ta, &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta,
                               C, &ldc);
    }
}

/* C = alpha A^T B + beta C with a long reduction (K much larger than M and N: the
 * weight gradients, x^T dy over every position of the batch), split along K: thread
 * p multiplies its rows of A and B into a partial C, and the partials are summed.
 * Split by panels of C instead, every thread would read all of B and a strided part
 * of A, and OpenBLAS packs each again: on an Intel Xeon (Emerald Rapids, 2 threads)
 * the d x d weight gradient of `small` ran at 115 GFLOP/s so against MKL's 203.
 * The partials need (nt - 1) * M * N floats of scratch, allocated here: the one
 * allocation in csrc/, because its size depends on the thread count at the call. */
static int sgemm_split_k(size_t M, size_t N, size_t K, float alpha, const float *A,
                         size_t lda, const float *B, size_t ldb, float beta, float *C,
                         size_t ldc, int nt) {
    float *part = malloc((size_t)(nt - 1) * M * N * sizeof(float));
    if (!part) return SC_ERR_NO_MEMORY;
#pragma omp parallel for schedule(static, 1) num_threads(nt)
    for (int p = 0; p < nt; p++) {
        const size_t lo = K * p / nt, hi = K * (p + 1) / nt;
        if (p == 0)
            sgemm1(1, 0, (int)M, (int)N, (int)(hi - lo), alpha, A + lo * lda, (int)lda,
                   B + lo * ldb, (int)ldb, beta, C, (int)ldc);
        else
            sgemm1(1, 0, (int)M, (int)N, (int)(hi - lo), alpha, A + lo * lda, (int)lda,
                   B + lo * ldb, (int)ldb, 0.0f, part + (size_t)(p - 1) * M * N, (int)N);
    }
#pragma omp parallel for schedule(static) num_threads(nt)
    for (size_t i = 0; i < M; i++)
        for (int p = 1; p < nt; p++) {
            const float *src = part + (size_t)(p - 1) * M * N + i * N;
            float *dst = C + i * ldc;
            for (size_t j = 0; j < N; j++) dst[j] += src[j];
        }
    free(part);
    return SC_OK;
}

/* Products smaller than this many multiply-adds run on the calling thread. */
#define SPLIT_MIN_WORK 2000000.0

int sc_sgemm(int transA, int transB, size_t M, size_t N, size_t K, float alpha,
             const float *A, size_t lda, const float *B, size_t ldb, float beta,
             float *C, size_t ldc) {
    if (!g_sgemm) return SC_ERR_NO_BLAS;
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX ||
        ldb > INT_MAX || ldc > INT_MAX)
        return SC_ERR_TOO_LARGE;
    if (M == 0 || N == 0) return SC_OK;
    int nt = 1;
#ifdef _OPENMP
    if (!omp_in_parallel() && (double)M * N * K >= SPLIT_MIN_WORK) nt = sc_get_num_threads();
#endif
    const int by_rows = M >= N;
    const size_t len = by_rows ? M : N;
    if ((size_t)nt > len / 16) nt = (int)(len / 16) > 1 ? (int)(len / 16) : 1;
    if (nt <= 1) {
        sgemm1(transA, transB, (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb,
               beta, C, (int)ldc);
        return SC_OK;
    }
    if (transA && !transB && K >= 8 * (M > N ? M : N) && K >= 64 * (size_t)nt) {
        const int rc = sgemm_split_k(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nt);
        if (rc != SC_ERR_NO_MEMORY) return rc;  /* no room for the partial sums: split by panels */
    }
#pragma omp parallel for schedule(static, 1) num_threads(nt)
    for (int p = 0; p < nt; p++) {
        /* panel boundaries on multiples of 16 rows/columns (cache lines of C) */
        const size_t lo = (len * p / nt) & ~(size_t)15;
        const size_t hi = p == nt - 1 ? len : (len * (p + 1) / nt) & ~(size_t)15;
        if (hi <= lo) continue;
        if (by_rows) /* rows lo..hi of C and of op(A) */
            sgemm1(transA, transB, (int)(hi - lo), (int)N, (int)K, alpha,
                   transA ? A + lo : A + lo * lda, (int)lda, B, (int)ldb, beta,
                   C + lo * ldc, (int)ldc);
        else /* columns lo..hi of C and of op(B) */
            sgemm1(transA, transB, (int)M, (int)(hi - lo), (int)K, alpha, A, (int)lda,
                   transB ? B + lo * ldb : B + lo, (int)ldb, beta, C + lo, (int)ldc);
    }
    return SC_OK;
}

/* sc_sgemm, or with bfloat16 operands sc_bgemm (bf16.c); SC_ERR_BAD_ARG for another prec */
int sc_gemm(int prec, int transA, int transB, size_t M, size_t N, size_t K, float alpha,
            const float *A, size_t lda, const float *B, size_t ldb, float beta, float *C,
            size_t ldc) {
    if (prec == SC_PREC_BF16)
        return sc_bgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (prec != SC_PREC_F32) return SC_ERR_BAD_ARG;
    return sc_sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* The thread count is a process-wide setting, like the BLAS: OpenMP keeps one per
 * thread (a Python thread other than the one that called simcore.set_threads starts
 * at OpenMP's default), and a product split into panels rounds a little differently
 * by their number, so every thread must split alike. 0: not set, OpenMP's default. */
static int g_threads = 0;

int sc_get_num_threads(void) {
#ifdef _OPENMP
    return g_threads > 0 ? g_threads : omp_get_max_threads();
#else
    return 1;
#endif
}

void sc_set_num_threads(int n) {
#ifdef _OPENMP
    if (n > 0) {
        g_threads = n;
        omp_set_num_threads(n);
    }
#else
    (void)n;
#endif
}
