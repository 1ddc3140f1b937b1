/* linear.c: y = x @ W, the projection every layer uses (attention q/k/v/o, the
 * MLP and the linear head), one BLAS call over all B*T rows.
 *
 *   forward:  out[N,Cout] = x[N,Cin] @ w[Cin,Cout] + beta * out   (beta 0 or 1 for
 *             few rows: then no BLAS, see SMALL_N)
 * With prec SC_PREC_BF16 the operands of every product are rounded to bfloat16
 * (bf16.c's product; few rows too), the sums float32.
 *   backward: dx[N,Cin]   += dout @ w^T
 *             dw[Cin,Cout] += x^T @ dout      (the GEMM accumulates, beta = 1)
 *
 * The linear head is exactly this layer, so it lives here rather than in a
 * head.c of its own.
 */
#include "simcore.h"
#include "tile.h"

/* Up to this many rows, the forward product runs in the register-tiled kernel on
 * the calling thread: sampling's projections of a few rows per thread. A BLAS
 * call would pack all of w to use it a few times (OpenBLAS's packing took more
 * time than its kernel at 5 rows), while tile_mm streams w from cache once per
 * MR rows. */
#define SMALL_N 64

/* out: INOUT [N,Cout] (read only if beta != 0); x: IN [N,Cin]; w: IN [Cin,Cout];
 * prec: the operands' precision (SC_PREC_*) */
int linear_forward(float *out, const float *x, const float *w, float beta, int prec,
                   size_t N, size_t Cin, size_t Cout) {
    if (prec == SC_PREC_BF16) return sc_gemm(prec, 0, 0, N, Cout, Cin, 1.0f, x, Cin, w, Cout, beta, out, Cout);
    if (N <= SMALL_N && (beta == 0.0f || beta == 1.0f)) {
        tile_mm(out, Cout, x, Cin, 1, w, Cout, N, Cout, Cin, beta == 0.0f);
        return SC_OK;
    }
    return sc_sgemm(0, 0, N, Cout, Cin, 1.0f, x, Cin, w, Cout, beta, out, Cout);
}

/* dx: INOUT [N,Cin] or NULL (skip); dw: INOUT [Cin,Cout]; dout: IN [N,Cout];
 * x: IN [N,Cin]; w: IN [Cin,Cout] */
int linear_backward(float *dx, float *dw, const float *dout, const float *x,
                    const float *w, int prec, size_t N, size_t Cin, size_t Cout) {
    int rc = SC_OK;
    if (dx) rc = sc_gemm(prec, 0, 1, N, Cin, Cout, 1.0f, dout, Cout, w, Cout, 1.0f, dx, Cin);
    if (rc) return rc;
    return sc_gemm(prec, 1, 0, Cin, Cout, N, 1.0f, x, Cin, dout, Cout, 1.0f, dw, Cout);
}
