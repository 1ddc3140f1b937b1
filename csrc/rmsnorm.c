/* rmsnorm.c: root-mean-square normalisation with a learned gain.
 *
 *   rstd[n]  = 1 / sqrt(mean_c x[n,c]^2 + eps),  eps = 1e-5
 *   y[n,c]   = x[n,c] * rstd[n] * w[c]
 * Backward, with g = dy * w:
 *   dw[c]   += sum_n dy[n,c] * x[n,c] * rstd[n]
 *   dx[n,c] += rstd[n] * (g[n,c] - x[n,c] * rstd[n]^2 * mean_c(g[n,:] * x[n,:]))
 */
#include "simcore.h"
#include <math.h>

#define RMS_EPS 1e-5f

/* out: OUT [N,C]; rstd: OUT [N]; x: IN [N,C]; w: IN [C] */
void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w,
                     size_t N, size_t C) {
#pragma omp parallel for schedule(static) if (N * C > 65536)
    for (size_t n = 0; n < N; n++) {
        const float *xr = x + n * C;
        float *o = out + n * C;
        float ss = 0.0f;
        for (size_t c = 0; c < C; c++) ss += xr[c] * xr[c];
        float r = 1.0f / sqrtf(ss / (float)C + RMS_EPS);
        rstd[n] = r;
        for (size_t c = 0; c < C; c++) o[c] = xr[c] * r * w[c];
    }
}

/* dx: INOUT [N,C]; dw: INOUT [C]; dout: IN [N,C]; x: IN [N,C]; w: IN [C];
 * rstd: IN [N]. dx must not alias dout. */
void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                      const float *w, const float *rstd, size_t N, size_t C) {
    /* dx rows are independent; dw is a reduction over rows, done serially after
     * so that the result does not depend on the thread count. */
#pragma omp parallel for schedule(static) if (N * C > 65536)
    for (size_t n = 0; n < N; n++) {
        const float *xr = x + n * C, *g = dout + n * C;
        float *d = dx + n * C;
        const float r = rstd[n];
        float dot = 0.0f;
        for (size_t c = 0; c < C; c++) dot += g[c] * w[c] * xr[c];
        const float k = dot / (float)C * r * r;
        for (size_t c = 0; c < C; c++) d[c] += r * (g[c] * w[c] - xr[c] * k);
    }
    for (size_t n = 0; n < N; n++) {
        const float *xr = x + n * C, *g = dout + n * C;
        const float r = rstd[n];
        for (size_t c = 0; c < C; c++) dw[c] += g[c] * xr[c] * r;
    }
}
