/* mlp.c: the feed-forward block (and the "mlp" head), SiLU between two linears.
 *
 *   h_pre = x @ w1            [N,H]
 *   h_act = silu(h_pre)       silu(z) = z * sigmoid(z)
 *   out   = h_act @ w2 + beta * out
 * Backward (dh is scratch, h_act is recomputed from h_pre so that the forward
 * pass need not keep it: one [N,H] buffer per layer saved):
 *   dw2 += h_act^T @ dout
 *   dh   = (dout @ w2^T) * silu'(h_pre),  silu'(z) = s * (1 + z * (1 - s))
 *   dw1 += x^T @ dh
 *   dx  += dh @ w1^T
 */
#include "simcore.h"
#include "vec.h"
#include "parallel.h"
#include <math.h>

/* The element-wise loops run in VW-float vectors (vec.h) over chunks of rows, one
 * chunk per thread; the tail of n % VW elements takes the scalar path. */
#define CHUNK 16384

/* out[i] = silu(x[i]) */
static void silu_chunk(float *out, const float *x, size_t n) {
    size_t i = 0;
    for (; i + VW <= n; i += VW) {
        const vf v = vload(x + i);
        vstore(out + i, v * vsigmoid(v));
    }
    for (; i < n; i++) out[i] = x[i] * sigmoidf_(x[i]);
}

/* g[i] *= silu'(x[i]) (overwrite = 1) or dx[i] += g[i] * silu'(x[i]) (overwrite = 0) */
static void silu_grad_chunk(float *dx, const float *g, const float *x, size_t n, int overwrite) {
    size_t i = 0;
    for (; i + VW <= n; i += VW) {
        const vf v = vload(x + i), s = vsigmoid(v);
        const vf d = vload(g + i) * s * (1.0f + v * (1.0f - s));
        vstore(dx + i, overwrite ? d : vload(dx + i) + d);
    }
    for (; i < n; i++) {
        const float s = sigmoidf_(x[i]), d = g[i] * s * (1.0f + x[i] * (1.0f - s));
        dx[i] = overwrite ? d : dx[i] + d;
    }
}

/* One element-wise SiLU loop over n elements, cut into CHUNKs: forward (out = silu(x)),
 * backward (dx += g * silu'(x)) or in place (g *= silu'(x), dx == g, overwrite). */
typedef struct {
    float *out;
    const float *g, *x;
    size_t n;
    int grad, overwrite;
} Silu;

#define CHUNKS(n) (((n) + CHUNK - 1) / CHUNK)

static void silu_chunks(void *ctx, size_t lo, size_t hi) {
    const Silu a = *(const Silu *)ctx;
    for (size_t i = lo * CHUNK; i < hi * CHUNK && i < a.n; i += CHUNK) {
        const size_t len = a.n - i < CHUNK ? a.n - i : CHUNK;
        if (a.grad) silu_grad_chunk(a.out + i, a.g + i, a.x + i, len, a.overwrite);
        else silu_chunk(a.out + i, a.x + i, len);
    }
}

/* out: OUT [n]; x: IN [n] */
void silu_forward(float *out, const float *x, size_t n) {
    Silu a = {out, NULL, x, n, 0, 0};
    sc_parallel_for(CHUNKS(n), threads_if(n > 4 * CHUNK), silu_chunks, &a);
}

/* dx: INOUT [n]; dout: IN [n]; x: IN [n] (the SiLU input) */
void silu_backward(float *dx, const float *dout, const float *x, size_t n) {
    Silu a = {dx, dout, x, n, 1, 0};
    sc_parallel_for(CHUNKS(n), threads_if(n > 4 * CHUNK), silu_chunks, &a);
}

/* out: INOUT [N,Cout]; h_pre, h_act: OUT [N,H]; x: IN [N,C]; w1: IN [C,H];
 * w2: IN [H,Cout] */
int mlp_forward(float *out, float *h_pre, float *h_act, const float *x,
                const float *w1, const float *w2, float beta, int prec,
                size_t N, size_t C, size_t H, size_t Cout) {
    int rc = linear_forward(h_pre, x, w1, 0.0f, prec, N, C, H);
    if (rc) return rc;
    silu_forward(h_act, h_pre, N * H);
    return linear_forward(out, h_act, w2, beta, prec, N, H, Cout);
}

/* dx: INOUT [N,C]; dw1: INOUT [C,H]; dw2: INOUT [H,Cout]; dh, h_act: scratch
 * [N,H]; dout: IN [N,Cout]; x: IN [N,C]; h_pre: IN [N,H]; w1, w2: IN */
int mlp_backward(float *dx, float *dw1, float *dw2, float *dh, float *h_act,
                 const float *dout, const float *x, const float *h_pre,
                 const float *w1, const float *w2, int prec,
                 size_t N, size_t C, size_t H, size_t Cout) {
    silu_forward(h_act, h_pre, N * H);
    int rc = sc_gemm(prec, 1, 0, H, Cout, N, 1.0f, h_act, H, dout, Cout, 1.0f, dw2, Cout);
    if (rc) return rc;
    rc = sc_gemm(prec, 0, 1, N, H, Cout, 1.0f, dout, Cout, w2, Cout, 0.0f, dh, H);
    if (rc) return rc;
    const size_t n = N * H;
    Silu a = {dh, dh, h_pre, n, 1, 1}; /* dh *= silu'(h_pre) */
    sc_parallel_for(CHUNKS(n), threads_if(n > 4 * CHUNK), silu_chunks, &a);
    return linear_backward(dx, dw1, dh, x, w1, prec, N, C, H);
}
