/* rmsnorm.c: root-mean-square normalisation with a learned gain.
 *
 *   rstd[n]  = 1 / sqrt(mean_c x[n,c]^2 + eps),  eps = 1e-5
 *   y[n,c]   = x[n,c] * rstd[n] * w[c]
 * Backward, with g = dy * w:
 *   dw[c]   += sum_n dy[n,c] * x[n,c] * rstd[n]
 *   dx[n,c] += rstd[n] * (g[n,c] - x[n,c] * rstd[n]^2 * mean_c(g[n,:] * x[n,:]))
 */
#include "simcore.h"
#include "parallel.h"
#include <math.h>

#define RMS_EPS 1e-5f

typedef struct {
    float *out, *rstd;
    const float *x, *w;
    size_t C;
} RmsForward;

static void rmsnorm_rows(void *ctx, size_t lo, size_t hi) {
    const RmsForward a = *(const RmsForward *)ctx;
    const size_t C = a.C;
    for (size_t n = lo; n < hi; n++) {
        const float *xr = a.x + n * C;
        float *o = a.out + n * C;
        float ss = 0.0f;
        for (size_t c = 0; c < C; c++) ss += xr[c] * xr[c];
        float r = 1.0f / sqrtf(ss / (float)C + RMS_EPS);
        a.rstd[n] = r;
        for (size_t c = 0; c < C; c++) o[c] = xr[c] * r * a.w[c];
    }
}

/* out: OUT [N,C]; rstd: OUT [N]; x: IN [N,C]; w: IN [C] */
void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w,
                     size_t N, size_t C) {
    RmsForward a = {out, rstd, x, w, C};
    sc_parallel_for(N, threads_if(N * C > 65536), rmsnorm_rows, &a);
}

typedef struct {
    float *dx;
    const float *dout, *x, *w, *rstd;
    size_t C;
} RmsBackward;

static void rmsnorm_grad_rows(void *ctx, size_t lo, size_t hi) {
    const RmsBackward a = *(const RmsBackward *)ctx;
    const size_t C = a.C;
    for (size_t n = lo; n < hi; n++) {
        const float *xr = a.x + n * C, *g = a.dout + n * C;
        float *d = a.dx + n * C;
        const float r = a.rstd[n];
        float dot = 0.0f;
        for (size_t c = 0; c < C; c++) dot += g[c] * a.w[c] * xr[c];
        const float k = dot / (float)C * r * r;
        for (size_t c = 0; c < C; c++) d[c] += r * (g[c] * a.w[c] - xr[c] * k);
    }
}

/* dx: INOUT [N,C]; dw: INOUT [C]; dout: IN [N,C]; x: IN [N,C]; w: IN [C];
 * rstd: IN [N]. dx must not alias dout. */
void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                      const float *w, const float *rstd, size_t N, size_t C) {
    /* dx rows are independent; dw is a reduction over rows, done serially after
     * so that the result does not depend on the thread count. */
    RmsBackward a = {dx, dout, x, w, rstd, C};
    sc_parallel_for(N, threads_if(N * C > 65536), rmsnorm_grad_rows, &a);
    for (size_t n = 0; n < N; n++) {
        const float *xr = x + n * C, *g = dout + n * C;
        const float r = rstd[n];
        for (size_t c = 0; c < C; c++) dw[c] += g[c] * xr[c] * r;
    }
}
