/* muon.c: Muon (momentum orthogonalised by Newton-Schulz) for one hidden weight
 * matrix, as Keller Jordan's reference computes it (there in bfloat16, here all
 * float32):
 *
 *   g    = grad_scale * grad                      (grad_scale < 1 when clipping)
 *   buf  = momentum * buf + g
 *   u    = g + momentum * buf                     (Nesterov)
 *   X    = u / (||u||_F + 1e-7)
 *   ns_steps times, for a wide X (R <= Cc):
 *        A = X X^T,  B = b A + c A A,  X = a X + B X,   (a, b, c) = (3.4445, -4.7750, 2.0315)
 *   and for a tall one the same on X^T:  A = X^T X,  X = a X + X B
 *   p    = p * (1 - lr * weight_decay) - lr * sqrt(max(1, Cc / R)) * X
 *
 * The iteration pushes every singular value of u towards 1 (into about [0.7, 1.2]):
 * the update is u's nearest semi-orthogonal matrix. Weights here are stored [in, out]
 * (x @ w), so Cc / R is fan-out over fan-in, the ratio the reference writes
 * rows / cols for torch's [out, in] layout.
 *
 * p, buf: INOUT [R, Cc]; grad: IN [R, Cc]; scratch: [2*R*Cc + 2*m*m] floats, m = min(R, Cc).
 * The products go to sc_sgemm (threaded by panels); the element-wise loops are this
 * level's. Returns SC_OK or sc_sgemm's error.
 */
#include "simcore.h"
#include "parallel.h"
#include <math.h>

static const float NS_A = 3.4445f, NS_B = -4.7750f, NS_C = 2.0315f;

size_t muon_scratch_floats(size_t R, size_t Cc) {
    const size_t m = R < Cc ? R : Cc;
    return 2 * R * Cc + 2 * m * m;
}

typedef struct {
    float *X, *buf;
    const float *grad;
    float grad_scale, momentum;
} Momentum;

/* buf = momentum * buf + g, X = g + momentum * buf over [lo,hi); returns sum X^2 there */
static double momentum_range(void *ctx, size_t lo, size_t hi) {
    const Momentum a = *(const Momentum *)ctx;
    double ss = 0.0;
    for (size_t i = lo; i < hi; i++) {
        const float g = a.grad[i] * a.grad_scale;
        const float b = a.momentum * a.buf[i] + g;
        a.buf[i] = b;
        a.X[i] = g + a.momentum * b;
        ss += (double)a.X[i] * a.X[i];
    }
    return ss;
}

typedef struct {
    float *p;
    const float *X;
    float decay, scale;
} Step;

static void step_range(void *ctx, size_t lo, size_t hi) {
    const Step a = *(const Step *)ctx;
    for (size_t i = lo; i < hi; i++) a.p[i] = a.p[i] * a.decay - a.scale * a.X[i];
}

int muon_update(float *p, float *buf, const float *grad, float *scratch, size_t R, size_t Cc,
                float lr, float momentum, float weight_decay, float grad_scale, int ns_steps) {
    const size_t n = R * Cc, m = R < Cc ? R : Cc;
    const int tall = R > Cc;
    float *X = scratch, *Y = scratch + n, *A = scratch + 2 * n, *Bm = A + m * m;
    Momentum mo = {X, buf, grad, grad_scale, momentum};
    const double ss = sc_parallel_sum(n, threads_if(n > 65536), momentum_range, &mo);
    const float inv = (float)(1.0 / (sqrt(ss) + 1e-7));
    for (size_t i = 0; i < n; i++) X[i] *= inv;
    for (int s = 0; s < ns_steps; s++) {
        int rc;
        /* A = X X^T (wide) or X^T X (tall): m x m */
        if (tall) rc = sc_sgemm(1, 0, m, m, R, 1.0f, X, Cc, X, Cc, 0.0f, A, m);
        else      rc = sc_sgemm(0, 1, m, m, Cc, 1.0f, X, Cc, X, Cc, 0.0f, A, m);
        if (rc != SC_OK) return rc;
        for (size_t i = 0; i < m * m; i++) Bm[i] = NS_B * A[i];
        rc = sc_sgemm(0, 0, m, m, m, NS_C, A, m, A, m, 1.0f, Bm, m); /* B = bA + cAA */
        if (rc != SC_OK) return rc;
        for (size_t i = 0; i < n; i++) Y[i] = NS_A * X[i];
        /* Y = a X + B X (wide) or a X + X B (tall; B is symmetric) */
        if (tall) rc = sc_sgemm(0, 0, R, Cc, Cc, 1.0f, X, Cc, Bm, m, 1.0f, Y, Cc);
        else      rc = sc_sgemm(0, 0, R, Cc, R, 1.0f, Bm, m, X, Cc, 1.0f, Y, Cc);
        if (rc != SC_OK) return rc;
        float *t = X; X = Y; Y = t;
    }
    const float scale = lr * sqrtf(Cc > R ? (float)Cc / (float)R : 1.0f);
    const float decay = 1.0f - lr * weight_decay;
    Step st = {p, X, decay, scale};
    sc_parallel_for(n, threads_if(n > 65536), step_range, &st);
    return SC_OK;
}
