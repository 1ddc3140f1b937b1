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
#include "parallel.h"
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

typedef struct {
    float *losses, *lse;
    const float *logits;
    const uint8_t *tokens;
    size_t T, V;
} XentForward;

static void xent_rows(void *ctx, size_t lo, size_t hi) {
    const XentForward a = *(const XentForward *)ctx;
    for (size_t bt = lo; bt < hi; bt++) {
        const float *z = a.logits + bt * a.V;
        const float l = row_lse(z, a.V);
        a.lse[bt] = l;
        size_t b = bt / a.T, t = bt % a.T;
        if (t + 1 < a.T) a.losses[b * (a.T - 1) + t] = l - z[a.tokens[bt + 1]];
    }
}

/* losses: OUT [B,T-1]; lse: OUT [B,T]; logits: IN [B,T,V]; tokens: IN [B,T] */
void xent_forward(float *losses, float *lse, const float *logits,
                  const uint8_t *tokens, size_t B, size_t T, size_t V) {
    XentForward a = {losses, lse, logits, tokens, T, V};
    sc_parallel_for(B * T, threads_if(B * T * V > 65536), xent_rows, &a);
}

typedef struct {
    float *dlogits;
    const float *logits, *lse;
    const uint8_t *tokens;
    float scale;
    size_t T, V;
} XentBackward;

static void xent_grad_rows(void *ctx, size_t lo, size_t hi) {
    const XentBackward a = *(const XentBackward *)ctx;
    for (size_t bt = lo; bt < hi; bt++) {
        if (bt % a.T == a.T - 1) continue;
        row_softmax_add(a.dlogits + bt * a.V, a.logits + bt * a.V, a.lse[bt], a.scale, a.V);
        a.dlogits[bt * a.V + a.tokens[bt + 1]] -= a.scale;
    }
}

/* dlogits: INOUT [B,T,V]; logits: IN [B,T,V]; lse: IN [B,T]; tokens: IN [B,T] */
void xent_backward(float *dlogits, const float *logits, const float *lse,
                   const uint8_t *tokens, float scale, size_t B, size_t T,
                   size_t V) {
    XentBackward a = {dlogits, logits, lse, tokens, scale, T, V};
    sc_parallel_for(B * T, threads_if(B * T * V > 65536), xent_grad_rows, &a);
}
