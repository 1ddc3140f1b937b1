/* blas.c: the single door to BLAS, and our own thread count.
 *
 * Nothing is linked at build time. Python registers a function pointer at import:
 * by default SciPy's OpenBLAS `sgemm` (from scipy.linalg.cython_blas, as
 * scikit-learn does), or any library's `sgemm_` / `cblas_sgemm` chosen at run
 * time (simcore.use_blas). The pointer is one of csrc/'s process-wide settings (with
 * the thread count, parallel.c, and the vector level, dispatch.c): the BLAS is a
 * process-wide choice, like the library itself, and threading it through every
 * kernel signature would add noise to all of them.
 *
 * Row-major C = op(A) @ op(B) is computed by the column-major sgemm as
 * C^T = op(B)^T @ op(A)^T: swap the operands, keep the transposition flags.
 *
 * Threads: one pool, ours (parallel.h). The BLAS is kept single-threaded
 * (simcore/blas.py sets it so) and a large product is split into row (or column)
 * panels of C, one per thread of ours, each a single-threaded sgemm. Two pools
 * (OpenBLAS's pthreads and our OpenMP) on the same cores spin against each other
 * between calls; measured here that cost 20-40% of a training step.
 */
#include "simcore.h"
#include "parallel.h"
#include <stdlib.h>
#include <limits.h>

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

/* One product's arguments, for the threads that share it. */
typedef struct {
    int transA, transB;
    size_t M, N, K;
    float alpha, beta;
    const float *A, *B;
    size_t lda, ldb, ldc;
    float *C, *part;
    size_t parts; /* panels, or pieces of K */
} Product;

/* Piece p of K (p = t, t + nt, ...: schedule(static, 1)): piece 0 into C with beta,
 * the others into their partial sums. */
static void split_k_pieces(void *ctx, size_t t, size_t nt) {
    const Product *a = ctx;
    const size_t M = a->M, N = a->N, K = a->K;
    for (size_t p = t; p < a->parts; p += nt) {
        const size_t lo = K * p / a->parts, hi = K * (p + 1) / a->parts;
        if (p == 0)
            sgemm1(1, 0, (int)M, (int)N, (int)(hi - lo), a->alpha, a->A + lo * a->lda, (int)a->lda,
                   a->B + lo * a->ldb, (int)a->ldb, a->beta, a->C, (int)a->ldc);
        else
            sgemm1(1, 0, (int)M, (int)N, (int)(hi - lo), a->alpha, a->A + lo * a->lda, (int)a->lda,
                   a->B + lo * a->ldb, (int)a->ldb, 0.0f, a->part + (p - 1) * M * N, (int)N);
    }
}

/* Rows [lo,hi) of C += the partial sums, in piece order. */
static void split_k_add(void *ctx, size_t lo, size_t hi) {
    const Product *a = ctx;
    const size_t M = a->M, N = a->N;
    for (size_t i = lo; i < hi; i++)
        for (size_t p = 1; p < a->parts; p++) {
            const float *src = a->part + (p - 1) * M * N + i * N;
            float *dst = a->C + i * a->ldc;
            for (size_t j = 0; j < N; j++) dst[j] += src[j];
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
static int sgemm_split_k(Product *a, int nt) {
    a->part = malloc((size_t)(nt - 1) * a->M * a->N * sizeof(float));
    if (!a->part) return SC_ERR_NO_MEMORY;
    a->parts = (size_t)nt;
    sc_parallel(nt, split_k_pieces, a);
    sc_parallel_for(a->M, nt, split_k_add, a);
    free(a->part);
    return SC_OK;
}

/* Panel p of C (p = t, t + nt, ...: schedule(static, 1)): rows (or columns) lo..hi. */
static void panels(void *ctx, size_t t, size_t nt) {
    const Product *a = ctx;
    const int by_rows = a->M >= a->N;
    const size_t len = by_rows ? a->M : a->N, P = a->parts;
    for (size_t p = t; p < P; p += nt) {
        /* panel boundaries on multiples of 16 rows/columns (cache lines of C) */
        const size_t lo = (len * p / P) & ~(size_t)15;
        const size_t hi = p == P - 1 ? len : (len * (p + 1) / P) & ~(size_t)15;
        if (hi <= lo) continue;
        if (by_rows) /* rows lo..hi of C and of op(A) */
            sgemm1(a->transA, a->transB, (int)(hi - lo), (int)a->N, (int)a->K, a->alpha,
                   a->transA ? a->A + lo : a->A + lo * a->lda, (int)a->lda, a->B, (int)a->ldb,
                   a->beta, a->C + lo * a->ldc, (int)a->ldc);
        else /* columns lo..hi of C and of op(B) */
            sgemm1(a->transA, a->transB, (int)a->M, (int)(hi - lo), (int)a->K, a->alpha, a->A,
                   (int)a->lda, a->transB ? a->B + lo * a->ldb : a->B + lo, (int)a->ldb, a->beta,
                   a->C + lo, (int)a->ldc);
    }
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
    if (!sc_in_parallel() && (double)M * N * K >= SPLIT_MIN_WORK) nt = sc_get_num_threads();
    const int by_rows = M >= N;
    const size_t len = by_rows ? M : N;
    if ((size_t)nt > len / 16) nt = (int)(len / 16) > 1 ? (int)(len / 16) : 1;
    if (nt <= 1) {
        sgemm1(transA, transB, (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb,
               beta, C, (int)ldc);
        return SC_OK;
    }
    Product a = {transA, transB, M, N, K, alpha, beta, A, B, lda, ldb, ldc, C, NULL, (size_t)nt};
    if (transA && !transB && K >= 8 * (M > N ? M : N) && K >= 64 * (size_t)nt) {
        const int rc = sgemm_split_k(&a, nt);
        if (rc != SC_ERR_NO_MEMORY) return rc;  /* no room for the partial sums: split by panels */
    }
    sc_parallel(nt, panels, &a);
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
