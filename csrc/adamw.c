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
#include <math.h>

/* Sum of squares of g: IN [n], accumulated in double. */
double grad_sumsq(const float *g, size_t n) {
    double s = 0.0;
#pragma omp parallel for reduction(+ : s) schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return s;
}

/* params, m, v: INOUT [n]; grads: IN [n]; step: the 1-based step number t */
void adamw_update(float *params, float *m, float *v, const float *grads,
                  float lr, float beta1, float beta2, float eps,
                  float weight_decay, float grad_scale, long step, size_t n) {
    const double bc1 = 1.0 - pow(beta1, (double)step);
    const double bc2 = 1.0 - pow(beta2, (double)step);
    const float step_size = (float)(lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float decay = 1.0f - lr * weight_decay;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float g = grads[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        params[i] = params[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}
