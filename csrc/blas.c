/* blas.c: the single door to BLAS, and our own thread count.
 *
 * Nothing is linked at build time. Python registers a function pointer at import:
 * by default SciPy's OpenBLAS `sgemm` (from scipy.linalg.cython_blas, as
 * scikit-learn does), or any library's `sgemm_` / `cblas_sgemm` chosen at run
 * time (simcore.use_blas). The pointer is the one global in csrc/: the BLAS is a
 * process-wide choice, like the library itself, and threading it through every
 * kernel signature would add noise to all of them.
 *
 * Row-major C = op(A) @ op(B) is computed by the column-major sgemm as
 * C^T = op(B)^T @ op(A)^T: swap the operands, keep the transposition flags.
 */
#include "simcore.h"
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
    if (kind != SC_BLAS_F77 && kind != SC_BLAS_CBLAS) return -1;
    g_kind = kind;
    g_sgemm = fn;
    return SC_OK;
}

int sc_blas_ready(void) { return g_sgemm != NULL; }

int sc_sgemm(int transA, int transB, size_t M, size_t N, size_t K, float alpha,
             const float *A, size_t lda, const float *B, size_t ldb, float beta,
             float *C, size_t ldc) {
    if (!g_sgemm) return SC_ERR_NO_BLAS;
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX ||
        ldb > INT_MAX || ldc > INT_MAX)
        return SC_ERR_TOO_LARGE;
    if (M == 0 || N == 0) return SC_OK;
    if (g_kind == SC_BLAS_CBLAS) {
        ((cblas_sgemm_t)g_sgemm)(CBLAS_ROW_MAJOR, transA ? CBLAS_TRANS : CBLAS_NO_TRANS,
                                 transB ? CBLAS_TRANS : CBLAS_NO_TRANS, (int)M, (int)N,
                                 (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C,
                                 (int)ldc);
    } else {
        const char ta = transA ? 'T' : 'N', tb = transB ? 'T' : 'N';
        const int m = (int)M, n = (int)N, k = (int)K;
        const int ia = (int)lda, ib = (int)ldb, ic = (int)ldc;
        ((f77_sgemm_t)g_sgemm)(&tb, &ta, &n, &m, &k, &alpha, B, &ib, A, &ia, &beta,
                               C, &ic);
    }
    return SC_OK;
}

int sc_get_num_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void sc_set_num_threads(int n) {
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads(n);
#else
    (void)n;
#endif
}
