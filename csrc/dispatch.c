/* dispatch.c: the vector level in use, and the public name of every vectorised
 * kernel, forwarding to that level's build of it.
 *
 * Each file of vectorised kernels is compiled three times (setup.py): for
 * AVX-512 (x86-64-v4: F, BW, DQ, VL, CD), AVX2 + FMA + F16C (x86-64-v3) and the x86-64
 * baseline (SSE2), each with its own flags and its own register tiles (vec.h),
 * as PyTorch builds a kernel once per CPU_CAPABILITY. At load time the level is
 * the best this CPU runs; sc_isa_set lowers it (SIMCORE_ISA, simcore.set_isa),
 * so one machine can run and measure every path. Never higher than the CPU
 * has: that would be an illegal instruction, not a slow path.
 *
 * The level is the second process-wide setting in csrc/ (with the BLAS pointer):
 * like the BLAS it is a property of the process, and changing it while a
 * kernel runs in another thread is the caller's race to avoid.
 */
#include "simcore.h"

#if defined(SC_X86_LEVELS) && (defined(__x86_64__) || defined(__i386__))
#define LEVELS(f)                                                                   \
    __typeof__(f) f##_baseline, f##_avx2, f##_avx512;                               \
    static __typeof__(f) *const f##_at[SC_ISA_COUNT] = {f##_baseline, f##_avx2, f##_avx512}
#else /* one level: the build's own (setup.py builds only _baseline elsewhere) */
#define LEVELS(f)                                                                   \
    __typeof__(f) f##_baseline;                                                     \
    static __typeof__(f) *const f##_at[SC_ISA_COUNT] = {f##_baseline, f##_baseline, f##_baseline}
#endif

static int sc_isa = -1; /* -1: not yet chosen; the first call takes the best level */

/* The best level this CPU and its operating system run (libgcc checks that the
 * OS saves the AVX / AVX-512 registers, not only the CPUID bits). */
int sc_isa_best(void) {
#if defined(SC_X86_LEVELS) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    const int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
                   __builtin_cpu_supports("f16c");
    const int v4 = v3 && __builtin_cpu_supports("avx512f") &&
                   __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd");
    return v4 ? SC_ISA_AVX512 : v3 ? SC_ISA_AVX2 : SC_ISA_BASELINE;
#else
    return SC_ISA_BASELINE;
#endif
}

int sc_isa_get(void) {
    if (sc_isa < 0) sc_isa = sc_isa_best();
    return sc_isa;
}

int sc_isa_set(int level) {
    if (level < 0 || level >= SC_ISA_COUNT) return SC_ERR_BAD_ARG;
    if (level > sc_isa_best()) return SC_ERR_UNSUPPORTED;
    sc_isa = level;
    return SC_OK;
}

/* The level for this call (sc_isa_get inlined: one load and a predictable branch). */
#define LEVEL (sc_isa >= 0 ? sc_isa : sc_isa_get())

LEVELS(posenc_init);
void posenc_init(float *pe, size_t T, size_t C, size_t side) {
    posenc_init_at[LEVEL](pe, T, C, side);
}

LEVELS(embedding_forward);
void embedding_forward(float *out, const uint8_t *tokens, const float *wte,
                       const float *pe, size_t B, size_t T, size_t C) {
    embedding_forward_at[LEVEL](out, tokens, wte, pe, B, T, C);
}

LEVELS(embedding_backward);
void embedding_backward(float *dwte, const float *dout, const uint8_t *tokens, size_t B,
                        size_t T, size_t C) {
    embedding_backward_at[LEVEL](dwte, dout, tokens, B, T, C);
}

LEVELS(embedding_above_forward);
void embedding_above_forward(float *out, const uint8_t *tokens, const float *wab, size_t shift,
                             size_t B, size_t T, size_t C) {
    embedding_above_forward_at[LEVEL](out, tokens, wab, shift, B, T, C);
}

LEVELS(embedding_above_backward);
void embedding_above_backward(float *dwab, const float *dout, const uint8_t *tokens, size_t shift,
                              size_t B, size_t T, size_t C) {
    embedding_above_backward_at[LEVEL](dwab, dout, tokens, shift, B, T, C);
}

LEVELS(embedding_class_forward);
void embedding_class_forward(float *out, const uint8_t *labels, const float *wcl,
                             size_t B, size_t T, size_t C) {
    embedding_class_forward_at[LEVEL](out, labels, wcl, B, T, C);
}

LEVELS(embedding_class_backward);
void embedding_class_backward(float *dwcl, const float *dout, const uint8_t *labels,
                              size_t B, size_t T, size_t C) {
    embedding_class_backward_at[LEVEL](dwcl, dout, labels, B, T, C);
}

LEVELS(rmsnorm_forward);
void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, size_t N,
                     size_t C) {
    rmsnorm_forward_at[LEVEL](out, rstd, x, w, N, C);
}

LEVELS(rmsnorm_backward);
void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                      const float *w, const float *rstd, size_t N, size_t C) {
    rmsnorm_backward_at[LEVEL](dx, dw, dout, x, w, rstd, N, C);
}

LEVELS(linear_forward);
int linear_forward(float *out, const float *x, const float *w, float beta, size_t N, size_t Cin,
                   size_t Cout) {
    return linear_forward_at[LEVEL](out, x, w, beta, N, Cin, Cout);
}

LEVELS(linear_backward);
int linear_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                    size_t N, size_t Cin, size_t Cout) {
    return linear_backward_at[LEVEL](dx, dw, dout, x, w, N, Cin, Cout);
}

LEVELS(silu_forward);
void silu_forward(float *out, const float *x, size_t n) {
    silu_forward_at[LEVEL](out, x, n);
}

LEVELS(silu_backward);
void silu_backward(float *dx, const float *dout, const float *x, size_t n) {
    silu_backward_at[LEVEL](dx, dout, x, n);
}

LEVELS(mlp_forward);
int mlp_forward(float *out, float *h_pre, float *h_act, const float *x, const float *w1,
                const float *w2, float beta, size_t N, size_t C, size_t H,
                size_t Cout) {
    return mlp_forward_at[LEVEL](out, h_pre, h_act, x, w1, w2, beta, N, C, H, Cout);
}

LEVELS(mlp_backward);
int mlp_backward(float *dx, float *dw1, float *dw2, float *dh, float *h_act,
                 const float *dout, const float *x, const float *h_pre, const float *w1,
                 const float *w2, size_t N, size_t C, size_t H, size_t Cout) {
    return mlp_backward_at[LEVEL](dx, dw1, dw2, dh, h_act, dout, x, h_pre, w1, w2, N,
                                   C, H, Cout);
}

LEVELS(attention_scratch_floats);
size_t attention_scratch_floats(size_t T, size_t C, size_t NH) {
    return attention_scratch_floats_at[LEVEL](T, C, NH);
}

LEVELS(attention_forward);
int attention_forward(float *out, float *lse, float *scratch, const float *q,
                      const float *k, const float *v, size_t B, size_t T, size_t C,
                      size_t NH, int nthreads) {
    return attention_forward_at[LEVEL](out, lse, scratch, q, k, v, B, T, C, NH,
                                        nthreads);
}

LEVELS(attention_backward);
int attention_backward(float *dq, float *dk, float *dv, float *scratch,
                       const float *dout, const float *q, const float *k,
                       const float *v, const float *out, const float *lse, size_t B,
                       size_t T, size_t C, size_t NH, int nthreads) {
    return attention_backward_at[LEVEL](dq, dk, dv, scratch, dout, q, k, v, out, lse,
                                         B, T, C, NH, nthreads);
}

LEVELS(kv_cache_write);
int kv_cache_write(void *kcache, void *vcache, int kv_type, const float *k, const float *v,
                   size_t pos, size_t B, size_t Tmax, size_t C, size_t NH) {
    return kv_cache_write_at[LEVEL](kcache, vcache, kv_type, k, v, pos, B, Tmax, C, NH);
}

LEVELS(attention_decode_scratch_floats);
size_t attention_decode_scratch_floats(size_t Tmax) {
    return attention_decode_scratch_floats_at[LEVEL](Tmax);
}

LEVELS(attention_decode);
int attention_decode(float *out, float *scratch, const float *q, const void *kcache,
                     const void *vcache, int kv_type, size_t pos, size_t B, size_t Tmax,
                     size_t C, size_t NH, int nthreads) {
    return attention_decode_at[LEVEL](out, scratch, q, kcache, vcache, kv_type, pos, B, Tmax,
                                       C, NH, nthreads);
}

LEVELS(block_decode_scratch_floats);
size_t block_decode_scratch_floats(size_t B, size_t C, size_t H, size_t Tmax,
                                   int nthreads) {
    return block_decode_scratch_floats_at[LEVEL](B, C, H, Tmax, nthreads);
}

LEVELS(block_decode);
int block_decode(float *x, void *kcache, void *vcache, int kv_type, float *scratch,
                 const BlockWeights *w, size_t pos, size_t B, size_t Tmax, size_t C,
                 size_t H, size_t NH, int nthreads) {
    return block_decode_at[LEVEL](x, kcache, vcache, kv_type, scratch, w, pos, B, Tmax, C,
                                   H, NH, nthreads);
}

LEVELS(sample_tokens);
void sample_tokens(uint8_t *out, double *work, const float *logits, const double *u,
                   double temperature, int top_k, size_t B, size_t V) {
    sample_tokens_at[LEVEL](out, work, logits, u, temperature, top_k, B, V);
}

LEVELS(xent_forward);
void xent_forward(float *losses, float *lse, const float *logits, const uint8_t *tokens,
                  size_t B, size_t T, size_t V) {
    xent_forward_at[LEVEL](losses, lse, logits, tokens, B, T, V);
}

LEVELS(xent_backward);
void xent_backward(float *dlogits, const float *logits, const float *lse,
                   const uint8_t *tokens, float scale, size_t B, size_t T, size_t V) {
    xent_backward_at[LEVEL](dlogits, logits, lse, tokens, scale, B, T, V);
}

LEVELS(grad_sumsq);
double grad_sumsq(const float *g, size_t n) {
    return grad_sumsq_at[LEVEL](g, n);
}

LEVELS(adamw_update);
void adamw_update(float *params, float *m, float *v, const float *grads, float lr,
                  float beta1, float beta2, float eps, float weight_decay,
                  float grad_scale, long step, size_t n) {
    adamw_update_at[LEVEL](params, m, v, grads, lr, beta1, beta2, eps, weight_decay,
                            grad_scale, step, n);
}

LEVELS(muon_scratch_floats);
size_t muon_scratch_floats(size_t R, size_t Cc) {
    return muon_scratch_floats_at[LEVEL](R, Cc);
}

LEVELS(muon_update);
int muon_update(float *p, float *buf, const float *grad, float *scratch, size_t R, size_t Cc,
                float lr, float momentum, float weight_decay, float grad_scale, int ns_steps) {
    return muon_update_at[LEVEL](p, buf, grad, scratch, R, Cc, lr, momentum, weight_decay,
                                 grad_scale, ns_steps);
}
