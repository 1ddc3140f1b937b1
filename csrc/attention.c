/* attention.c: causal multi-head softmax attention, flash-attention style.
 *
 * Per batch b and head h, with d = C/NH, Q,K,V the [T,d] slices of q,k,v:
 *   S    = Q K^T / sqrt(d),  masked to j <= i
 *   P    = softmax_row(S),   lse[i] = log sum_j exp(S[i,j])
 *   out  = P V
 * Backward (P recomputed from S and lse, never stored):
 *   D[i]  = sum_c dout[i,c] * out[i,c]
 *   dP    = dout V^T,   dS = P * (dP - D)
 *   dQ   += dS K / sqrt(d),  dK += dS^T Q / sqrt(d),  dV += P^T dout
 *
 * Memory: only lse [B,NH,T] is kept between forward and backward; the T x T
 * scores live one BQ x BK block at a time in per-thread scratch. The forward pass
 * walks key blocks with an online softmax (running max m and sum l, rescaling
 * the output rows as the max grows). Blocks above the diagonal are skipped;
 * in the diagonal block only the columns j <= i are computed.
 *
 * Threads: one (b,h) pair per task, OpenMP over B*NH. No BLAS inside (the blocks
 * are far too small for it); the inner loops are axpys over contiguous rows that
 * the compiler vectorises, built for AVX-512, AVX2 and baseline x86-64 and
 * chosen at run time (target_clones), never -march=native.
 *
 * Layout: q, k, v, out, dq, dk, dv are [B,T,C]; head h owns channels
 * [h*d, (h+1)*d). lse is [B,NH,T].
 */
#include "simcore.h"
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BQ 64
#define BK 64 /* == BQ: the diagonal block is the only partially masked one */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(SIMCORE_NO_CLONES)
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif

size_t attention_scratch_floats(size_t T, size_t C, size_t NH) {
    (void)T;
    const size_t d = C / NH;
    /* forward: S, Kt, m, l; backward: P, dP, Xt (a transposed block), Kt, Vt, D */
    return 3 * BQ * BK + 2 * d * BK + 4 * BQ;
}

/* exp(x) for x <= 0 (scores minus their row max / lse), branch-free so the loop
 * around it vectorises: 2^n * p(r), Cephes' degree-6 polynomial, ~1 ulp. */
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } s;
    s.i = ((int32_t)n + 127) << 23;
    return p * s.f;
}

/* Xt[e*ldt + c] = X[c*ldx + e] for c < n, e < d. */
static inline void transpose(float *restrict Xt, size_t ldt, const float *restrict X,
                             size_t ldx, size_t n, size_t d) {
    for (size_t c = 0; c < n; c++)
        for (size_t e = 0; e < d; e++) Xt[e * ldt + c] = X[c * ldx + e];
}

/* Cm[M,N] += A[M,K] @ Bm[K,N], all row-major with leading dimensions.
 * The micro-kernel keeps a 4 x 32 tile of Cm in eight 16-float vector registers
 * (GCC vector extensions: zmm in the AVX-512 clone, pairs of ymm for AVX2, SSE
 * quads in the baseline), streaming one row of Bm and four scalars of A per k.
 * Narrower edges take a 16-wide and then a scalar path. */
/* Helpers below are always inlined into the clones, so the vector ABI note
 * GCC emits for the baseline build does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v16 __attribute__((vector_size(64), aligned(4)));
#define MR 4

static inline __attribute__((always_inline)) v16 load16(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline __attribute__((always_inline)) void add16(float *p, v16 x) { v16 v = load16(p); v += x; memcpy(p, &v, sizeof v); }

static inline __attribute__((always_inline)) void mm_acc(float *restrict Cm, size_t ldc, const float *restrict A,
                          size_t lda, const float *restrict Bm, size_t ldb, size_t M,
                          size_t N, size_t K) {
    size_t i = 0;
    for (; i + MR <= M; i += MR) {
        const float *a0 = A + i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        float *c0 = Cm + i * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        size_t j = 0;
        for (; j + 32 <= N; j += 32) {
            v16 x0 = {0}, y0 = {0}, x1 = {0}, y1 = {0}, x2 = {0}, y2 = {0}, x3 = {0}, y3 = {0};
            for (size_t k = 0; k < K; k++) {
                const v16 bx = load16(Bm + k * ldb + j), by = load16(Bm + k * ldb + j + 16);
                x0 += a0[k] * bx; y0 += a0[k] * by;
                x1 += a1[k] * bx; y1 += a1[k] * by;
                x2 += a2[k] * bx; y2 += a2[k] * by;
                x3 += a3[k] * bx; y3 += a3[k] * by;
            }
            add16(c0 + j, x0); add16(c0 + j + 16, y0);
            add16(c1 + j, x1); add16(c1 + j + 16, y1);
            add16(c2 + j, x2); add16(c2 + j + 16, y2);
            add16(c3 + j, x3); add16(c3 + j + 16, y3);
        }
        for (; j + 16 <= N; j += 16) {
            v16 x0 = {0}, x1 = {0}, x2 = {0}, x3 = {0};
            for (size_t k = 0; k < K; k++) {
                const v16 bx = load16(Bm + k * ldb + j);
                x0 += a0[k] * bx; x1 += a1[k] * bx; x2 += a2[k] * bx; x3 += a3[k] * bx;
            }
            add16(c0 + j, x0); add16(c1 + j, x1); add16(c2 + j, x2); add16(c3 + j, x3);
        }
        for (; j < N; j++) {
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            for (size_t k = 0; k < K; k++) {
                const float b = Bm[k * ldb + j];
                s0 += a0[k] * b; s1 += a1[k] * b; s2 += a2[k] * b; s3 += a3[k] * b;
            }
            c0[j] += s0; c1[j] += s1; c2[j] += s2; c3[j] += s3;
        }
    }
    for (; i < M; i++) {
        float *c = Cm + i * ldc;
        for (size_t k = 0; k < K; k++) {
            const float a = A[i * lda + k];
            const float *b = Bm + k * ldb;
            for (size_t j = 0; j < N; j++) c[j] += a * b[j];
        }
    }
}

MULTIVERSION
static void forward_head(float *out, float *lse, float *scratch, const float *Q,
                         const float *K, const float *V, size_t T, size_t C,
                         size_t d) {
    float *S = scratch, *Kt = S + BQ * BK, *m = Kt + d * BK, *l = m + BQ;
    const float scale = 1.0f / sqrtf((float)d);
    for (size_t i0 = 0; i0 < T; i0 += BQ) {
        const size_t nq = T - i0 < BQ ? T - i0 : BQ;
        float *O = out + i0 * C;
        for (size_t r = 0; r < nq; r++) {
            m[r] = -INFINITY;
            l[r] = 0.0f;
            memset(O + r * C, 0, d * sizeof(float));
        }
        for (size_t j0 = 0; j0 <= i0; j0 += BK) { /* blocks above the diagonal skipped */
            const int diag = j0 == i0;
            const size_t nk = diag ? nq : BK;
            transpose(Kt, BK, K + j0 * C, C, nk, d);
            memset(S, 0, BQ * BK * sizeof(float));
            mm_acc(S, BK, Q + i0 * C, C, Kt, BK, nq, nk, d);
            for (size_t r = 0; r < nq; r++) {
                const size_t nc = diag ? r + 1 : nk; /* columns j <= i */
                float *s = S + r * BK;
                float mx = m[r];
                for (size_t c = 0; c < nc; c++) {
                    s[c] *= scale;
                    mx = s[c] > mx ? s[c] : mx;
                }
                const float alpha = expf(m[r] - mx); /* 0 on the first block */
                float sum = 0.0f;
                for (size_t c = 0; c < nc; c++) {
                    s[c] = exp_neg(s[c] - mx);
                    sum += s[c];
                }
                for (size_t c = nc; c < nk; c++) s[c] = 0.0f; /* masked */
                l[r] = l[r] * alpha + sum;
                m[r] = mx;
                if (alpha != 1.0f)
                    for (size_t e = 0; e < d; e++) O[r * C + e] *= alpha;
            }
            mm_acc(O, C, S, BK, V + j0 * C, C, nq, d, nk);
        }
        for (size_t r = 0; r < nq; r++) {
            const float inv = 1.0f / l[r];
            for (size_t e = 0; e < d; e++) O[r * C + e] *= inv;
            lse[i0 + r] = m[r] + logf(l[r]);
        }
    }
}

MULTIVERSION
static void backward_head(float *dQ, float *dK, float *dV, float *scratch,
                          const float *dO, const float *Q, const float *K,
                          const float *V, const float *O, const float *lse,
                          size_t T, size_t C, size_t d) {
    float *P = scratch, *dP = P + BQ * BK, *Xt = dP + BQ * BK, *Kt = Xt + BQ * BK;
    float *Vt = Kt + d * BK, *D = Vt + d * BK;
    const float scale = 1.0f / sqrtf((float)d);
    for (size_t i0 = 0; i0 < T; i0 += BQ) {
        const size_t nq = T - i0 < BQ ? T - i0 : BQ;
        for (size_t r = 0; r < nq; r++) {
            const float *o = O + (i0 + r) * C, *g = dO + (i0 + r) * C;
            float s = 0.0f;
            for (size_t e = 0; e < d; e++) s += o[e] * g[e];
            D[r] = s;
        }
        for (size_t j0 = 0; j0 <= i0; j0 += BK) {
            const int diag = j0 == i0;
            const size_t nk = diag ? nq : BK;
            transpose(Kt, BK, K + j0 * C, C, nk, d);
            transpose(Vt, BK, V + j0 * C, C, nk, d);
            memset(P, 0, 2 * BQ * BK * sizeof(float)); /* P and dP */
            mm_acc(P, BK, Q + i0 * C, C, Kt, BK, nq, nk, d);
            mm_acc(dP, BK, dO + i0 * C, C, Vt, BK, nq, nk, d);
            for (size_t r = 0; r < nq; r++) {
                const size_t nc = diag ? r + 1 : nk;
                float *p = P + r * BK, *ds = dP + r * BK;
                const float L = lse[i0 + r], Dr = D[r];
                for (size_t c = 0; c < nc; c++) {
                    p[c] = exp_neg(p[c] * scale - L);
                    ds[c] = p[c] * (ds[c] - Dr) * scale; /* dS, pre-scaled */
                }
                for (size_t c = nc; c < nk; c++) p[c] = ds[c] = 0.0f;
            }
            mm_acc(dQ + i0 * C, C, dP, BK, K + j0 * C, C, nq, d, nk);
            transpose(Xt, BQ, dP, BK, nq, nk);               /* dS^T [nk, nq] */
            mm_acc(dK + j0 * C, C, Xt, BQ, Q + i0 * C, C, nk, d, nq);
            transpose(Xt, BQ, P, BK, nq, nk);                /* P^T [nk, nq] */
            mm_acc(dV + j0 * C, C, Xt, BQ, dO + i0 * C, C, nk, d, nq);
        }
    }
}

/* out: OUT [B,T,C]; lse: OUT [B,NH,T]; scratch: [nthreads * scratch_floats];
 * q, k, v: IN [B,T,C] */
int attention_forward(float *out, float *lse, float *scratch, const float *q,
                      const float *k, const float *v, size_t B, size_t T,
                      size_t C, size_t NH, int nthreads) {
    const size_t d = C / NH, per = attention_scratch_floats(T, C, NH);
    if (nthreads < 1) return SC_ERR_SCRATCH;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (size_t bh = 0; bh < B * NH; bh++) {
#ifdef _OPENMP
        float *sc = scratch + (size_t)omp_get_thread_num() * per;
#else
        float *sc = scratch;
#endif
        const size_t b = bh / NH, h = bh % NH, off = b * T * C + h * d;
        forward_head(out + off, lse + bh * T, sc, q + off, k + off, v + off, T, C, d);
    }
    return SC_OK;
}

/* dq, dk, dv: INOUT [B,T,C]; scratch as forward; dout, q, k, v, out: IN [B,T,C];
 * lse: IN [B,NH,T] */
int attention_backward(float *dq, float *dk, float *dv, float *scratch,
                       const float *dout, const float *q, const float *k,
                       const float *v, const float *out, const float *lse,
                       size_t B, size_t T, size_t C, size_t NH, int nthreads) {
    const size_t d = C / NH, per = attention_scratch_floats(T, C, NH);
    if (nthreads < 1) return SC_ERR_SCRATCH;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (size_t bh = 0; bh < B * NH; bh++) {
#ifdef _OPENMP
        float *sc = scratch + (size_t)omp_get_thread_num() * per;
#else
        float *sc = scratch;
#endif
        const size_t b = bh / NH, h = bh % NH, off = b * T * C + h * d;
        backward_head(dq + off, dk + off, dv + off, sc, dout + off, q + off,
                      k + off, v + off, out + off, lse + bh * T, T, C, d);
    }
    return SC_OK;
}

/* ---- incremental decoding with a key/value cache ---------------------------------
 *
 * One new query per sequence attends to the cached keys/values of positions
 * 0..pos (itself included):  out[b] = softmax(q[b] . K[0..pos,b] / sqrt(d)) V[0..pos,b]
 * The caches are [B, NH, Tmax, d]: each (b,h) reads one contiguous block, so the
 * walk over positions streams through memory (a [Tmax, B, C] layout, which the
 * projections could write in place, strides B*C floats per position and was
 * ~50x slower at B=100). One (b,h) per task; the dot products run over
 * contiguous d-float rows, the weighted sum is an axpy. */

static inline __attribute__((always_inline)) float dot(const float *a, const float *b,
                                                       size_t d) {
    size_t e = 0;
    float s = 0.0f;
    if (d >= 16) {
        v16 acc = {0};
        for (; e + 16 <= d; e += 16) acc += load16(a + e) * load16(b + e);
        for (int i = 0; i < 16; i++) s += acc[i];
    }
    for (; e < d; e++) s += a[e] * b[e];
    return s;
}

MULTIVERSION
static void decode_head(float *out, float *s, const float *q, const float *Kc,
                        const float *Vc, size_t pos, size_t ld, size_t d) {
    const float scale = 1.0f / sqrtf((float)d);
    float mx = -INFINITY;
    for (size_t j = 0; j <= pos; j++) {
        s[j] = dot(q, Kc + j * ld, d) * scale;
        mx = s[j] > mx ? s[j] : mx;
    }
    float sum = 0.0f;
    for (size_t j = 0; j <= pos; j++) {
        s[j] = exp_neg(s[j] - mx);
        sum += s[j];
    }
    for (size_t e = 0; e < d; e++) out[e] = 0.0f;
    for (size_t j = 0; j <= pos; j++) {
        const float p = s[j] / sum, *v = Vc + j * ld;
        for (size_t e = 0; e < d; e++) out[e] += p * v[e];
    }
}

size_t attention_decode_scratch_floats(size_t Tmax) { return Tmax; }

/* out: OUT [B,C]; scratch: [nthreads * Tmax]; q: IN [B,C];
 * kcache, vcache: IN [B,NH,Tmax,d], positions 0..pos filled; pos < Tmax */
int attention_decode(float *out, float *scratch, const float *q, const float *kcache,
                     const float *vcache, size_t pos, size_t B, size_t Tmax,
                     size_t C, size_t NH, int nthreads) {
    const size_t d = C / NH;
    if (nthreads < 1 || pos >= Tmax) return SC_ERR_SCRATCH;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (B * NH * pos > 4096)
    for (size_t bh = 0; bh < B * NH; bh++) {
#ifdef _OPENMP
        float *sc = scratch + (size_t)omp_get_thread_num() * Tmax;
#else
        float *sc = scratch;
#endif
        const size_t off = (bh / NH) * C + (bh % NH) * d, coff = bh * Tmax * d;
        decode_head(out + off, sc, q + off, kcache + coff, vcache + coff, pos, d, d);
    }
    return SC_OK;
}
