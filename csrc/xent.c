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
#include <math.h>

/* losses: OUT [B,T-1]; lse: OUT [B,T]; logits: IN [B,T,V]; tokens: IN [B,T] */
void xent_forward(float *losses, float *lse, const float *logits,
                  const uint8_t *tokens, size_t B, size_t T, size_t V) {
#pragma omp parallel for schedule(static) if (B * T * V > 65536)
    for (size_t bt = 0; bt < B * T; bt++) {
        const float *z = logits + bt * V;
        float mx = z[0];
        for (size_t v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
        double s = 0.0;
        for (size_t v = 0; v < V; v++) s += expf(z[v] - mx);
        float l = mx + (float)log(s);
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
        const float *z = logits + bt * V;
        float *d = dlogits + bt * V;
        const float l = lse[bt];
        for (size_t v = 0; v < V; v++) d[v] += scale * expf(z[v] - l);
        d[tokens[bt + 1]] -= scale;
    }
}
