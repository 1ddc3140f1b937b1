/* adamw.c: AdamW with bias correction and decoupled weight decay, written as
 * torch.optim.AdamW computes it, plus the global gradient norm for clipping.
 *
 *   g      = grad_scale * grads            (grad_scale < 1 when clipping)
 *   p     -= lr * weight_decay * p
 *   m      = beta1 * m + (1 - beta1) * g
 *   v      = beta2 * v + (1 - beta2) * g^2
 *   p     -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * The model keeps parameters, gradients and moments in flat arenas, so one call
 * updates every tensor of one weight-decay group.
 */
#include "simcore.h"
#include "parallel.h"
#include <math.h>

static double sumsq_range(void *g, size_t lo, size_t hi) {
    const float *x = g;
    double s = 0.0;
    for (size_t i = lo; i < hi; i++) s += (double)x[i] * x[i];
    return s;
}

/* Sum of squares of g: IN [n], accumulated in double. */
double grad_sumsq(const float *g, size_t n) {
    return sc_parallel_sum(n, threads_if(n > 65536), sumsq_range, (void *)g);
}

typedef struct {
    float *params, *m, *v;
    const float *grads;
    float beta1, beta2, eps, grad_scale, step_size, bc2_sqrt, decay;
} AdamW;

static void adamw_range(void *ctx, size_t lo, size_t hi) {
    const AdamW a = *(const AdamW *)ctx;
    for (size_t i = lo; i < hi; i++) {
        float g = a.grads[i] * a.grad_scale;
        float mi = a.beta1 * a.m[i] + (1.0f - a.beta1) * g;
        float vi = a.beta2 * a.v[i] + (1.0f - a.beta2) * g * g;
        a.m[i] = mi;
        a.v[i] = vi;
        a.params[i] = a.params[i] * a.decay - a.step_size * mi / (sqrtf(vi) / a.bc2_sqrt + a.eps);
    }
}

/* params, m, v: INOUT [n]; grads: IN [n]; step: the 1-based step number t */
void adamw_update(float *params, float *m, float *v, const float *grads,
                  float lr, float beta1, float beta2, float eps,
                  float weight_decay, float grad_scale, long step, size_t n) {
    const double bc1 = 1.0 - pow(beta1, (double)step);
    const double bc2 = 1.0 - pow(beta2, (double)step);
    AdamW a = {params, m, v, grads, beta1, beta2, eps, grad_scale,
               (float)(lr / bc1), (float)sqrt(bc2), 1.0f - lr * weight_decay};
    sc_parallel_for(n, threads_if(n > 65536), adamw_range, &a);
}
