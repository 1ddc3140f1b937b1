/* xent.c: softmax cross-entropy on the next pixel.
 *
 * Row (b,t) for t < T-1 predicts target y = tokens[b,t+1]; the last position
 * has no target and contributes nothing.
 *   lse[b,t]    = log sum_v exp(logits[b,t,v])
 *   loss[b,t]   = lse[b,t] - logits[b,t,y]
 *   dlogits    += scale * (softmax(logits[b,t]) - onehot(y))
 * (The caller passes scale = 1 / (B*(T-1)) for a mean loss.)
 */
#include "simcore.h"
#include "vec.h"
#include <math.h>

/* One row of V logits: its log-sum-exp (V % 16 == 0, so V % VW == 0; the binding fixes V = 256). */
static float row_lse(const float *z, size_t V) {
    vf vm = vload(z);
    for (size_t v = VW; v < V; v += VW) vm = vmax(vm, vload(z + v));
    const float mx = hmax(vm);
    vf vs = {0};
    for (size_t v = 0; v < V; v += VW) vs += vexp(vload(z + v) - mx);
    return mx + logf(hsum(vs));
}

/* d[v] += scale * exp(z[v] - lse) */
static void row_softmax_add(float *d, const float *z, float lse, float scale, size_t V) {
    for (size_t v = 0; v < V; v += VW)
        vstore(d + v, vload(d + v) + scale * vexp(vload(z + v) - lse));
}

/* losses: OUT [B,T-1]; lse: OUT [B,T]; logits: IN [B,T,V]; tokens: IN [B,T] */
void xent_forward(float *losses, float *lse, const float *logits,
                  const uint8_t *tokens, size_t B, size_t T, size_t V) {
#pragma omp parallel for schedule(static) if (B * T * V > 65536)
    for (size_t bt = 0; bt < B * T; bt++) {
        const float *z = logits + bt * V;
        const float l = row_lse(z, V);
        lse[bt] = l;
        size_t b = bt / T, t = bt % T;
        if (t + 1 < T) losses[b * (T - 1) + t] = l - z[tokens[bt + 1]];
    }
}

/* dlogits: INOUT [B,T,V]; logits: IN [B,T,V]; lse: IN [B,T]; tokens: IN [B,T] */
void xent_backward(float *dlogits, const float *logits, const float *lse,
                   const uint8_t *tokens, float scale, size_t B, size_t T,
                   size_t V) {
#pragma omp parallel for schedule(static) if (B * T * V > 65536)
    for (size_t bt = 0; bt < B * T; bt++) {
        if (bt % T == T - 1) continue;
        row_softmax_add(dlogits + bt * V, logits + bt * V, lse[bt], scale, V);
        dlogits[bt * V + tokens[bt + 1]] -= scale;
    }
}
