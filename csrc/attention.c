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
#include "vec.h"
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BQ 64
#define BK 64 /* == BQ: the diagonal block is the only partially masked one */

size_t attention_scratch_floats(size_t T, size_t C, size_t NH) {
    (void)T;
    const size_t d = C / NH;
    /* forward: S, Kt, m, l; backward: P, dP, Kt, Vt, D */
    return 2 * BQ * BK + 2 * d * BK + 4 * BQ;
}

/* Xt[e*ldt + c] = X[c*ldx + e] for c < n, e < d. */
INLINE void transpose(float *restrict Xt, size_t ldt, const float *restrict X,
                      size_t ldx, size_t n, size_t d) {
    for (size_t c = 0; c < n; c++)
        for (size_t e = 0; e < d; e++) Xt[e * ldt + c] = X[c * ldx + e];
}

/* Cm[M,N] += op(A)[M,K] @ Bm[K,N], row-major. op(A)[i,k] = A[i*si + k*sk], so
 * the same kernel does A (si = lda, sk = 1) and A^T (si = 1, sk = lda) without
 * a transposed copy. A 4 x 32 tile of Cm lives in eight vector registers while
 * the kernel streams one row of Bm and four scalars of op(A) per k; narrower
 * edges take a 16-wide and then a scalar path. */
#define MR 4
INLINE void mm_acc(float *restrict Cm, size_t ldc, const float *restrict A, size_t si,
                   size_t sk, const float *restrict Bm, size_t ldb, size_t M, size_t N,
                   size_t K) {
    size_t i = 0;
    for (; i + MR <= M; i += MR) {
        const float *a0 = A + i * si, *a1 = a0 + si, *a2 = a1 + si, *a3 = a2 + si;
        float *c0 = Cm + i * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        size_t j = 0;
        for (; j + 32 <= N; j += 32) {
            v16 x0 = {0}, y0 = {0}, x1 = {0}, y1 = {0}, x2 = {0}, y2 = {0}, x3 = {0}, y3 = {0};
            for (size_t k = 0; k < K; k++) {
                const v16 bx = load16(Bm + k * ldb + j), by = load16(Bm + k * ldb + j + 16);
                const size_t o = k * sk;
                x0 += a0[o] * bx; y0 += a0[o] * by;
                x1 += a1[o] * bx; y1 += a1[o] * by;
                x2 += a2[o] * bx; y2 += a2[o] * by;
                x3 += a3[o] * bx; y3 += a3[o] * by;
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
                const size_t o = k * sk;
                x0 += a0[o] * bx; x1 += a1[o] * bx; x2 += a2[o] * bx; x3 += a3[o] * bx;
            }
            add16(c0 + j, x0); add16(c1 + j, x1); add16(c2 + j, x2); add16(c3 + j, x3);
        }
        for (; j < N; j++) {
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            for (size_t k = 0; k < K; k++) {
                const float b = Bm[k * ldb + j];
                const size_t o = k * sk;
                s0 += a0[o] * b; s1 += a1[o] * b; s2 += a2[o] * b; s3 += a3[o] * b;
            }
            c0[j] += s0; c1[j] += s1; c2[j] += s2; c3[j] += s3;
        }
    }
    for (; i < M; i++) {
        float *c = Cm + i * ldc;
        for (size_t k = 0; k < K; k++) {
            const float a = A[i * si + k * sk];
            const float *b = Bm + k * ldb;
            for (size_t j = 0; j < N; j++) c[j] += a * b[j];
        }
    }
}

/* Columns of an S row rounded up to whole vectors (BK is a multiple of 16). */
#define PAD16(n) (((n) + 15) & ~(size_t)15)

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
            const size_t nk = diag ? nq : BK, npad = PAD16(nk);
            transpose(Kt, BK, K + j0 * C, C, nk, d);
            memset(S, 0, BQ * BK * sizeof(float));
            mm_acc(S, BK, Q + i0 * C, C, 1, Kt, BK, nq, nk, d);
            for (size_t r = 0; r < nq; r++) {
                const size_t nc = diag ? r + 1 : nk; /* columns j <= i */
                float *s = S + r * BK;
                for (size_t c = nc; c < npad; c++) s[c] = -INFINITY; /* masked */
                v16 vmax = splat(-INFINITY);
                for (size_t c = 0; c < npad; c += 16) {
                    const v16 v = load16(s + c) * scale;
                    store16(s + c, v);
                    vmax = max16(vmax, v);
                }
                const float mx = fmaxf(m[r], hmax(vmax));
                const float alpha = expf(m[r] - mx); /* 0 on the first block */
                v16 vsum = {0};
                for (size_t c = 0; c < npad; c += 16) {
                    const v16 p = exp16(load16(s + c) - mx);
                    store16(s + c, p);
                    vsum += p;
                }
                l[r] = l[r] * alpha + hsum(vsum);
                m[r] = mx;
                if (alpha != 1.0f)
                    for (size_t e = 0; e < d; e++) O[r * C + e] *= alpha;
            }
            mm_acc(O, C, S, BK, 1, V + j0 * C, C, nq, d, nk);
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
    float *P = scratch, *dP = P + BQ * BK, *Kt = dP + BQ * BK, *Vt = Kt + d * BK;
    float *D = Vt + d * BK;
    const float scale = 1.0f / sqrtf((float)d);
    for (size_t i0 = 0; i0 < T; i0 += BQ) {
        const size_t nq = T - i0 < BQ ? T - i0 : BQ;
        for (size_t r = 0; r < nq; r++) D[r] = dot(O + (i0 + r) * C, dO + (i0 + r) * C, d);
        for (size_t j0 = 0; j0 <= i0; j0 += BK) {
            const int diag = j0 == i0;
            const size_t nk = diag ? nq : BK, npad = PAD16(nk);
            transpose(Kt, BK, K + j0 * C, C, nk, d);
            transpose(Vt, BK, V + j0 * C, C, nk, d);
            memset(P, 0, 2 * BQ * BK * sizeof(float)); /* P and dP */
            mm_acc(P, BK, Q + i0 * C, C, 1, Kt, BK, nq, nk, d);
            mm_acc(dP, BK, dO + i0 * C, C, 1, Vt, BK, nq, nk, d);
            for (size_t r = 0; r < nq; r++) {
                const size_t nc = diag ? r + 1 : nk;
                float *p = P + r * BK, *ds = dP + r * BK;
                for (size_t c = nc; c < npad; c++) p[c] = -INFINITY; /* masked: P = 0 */
                const float L = lse[i0 + r], Dr = D[r];
                for (size_t c = 0; c < npad; c += 16) {
                    const v16 pv = exp16(load16(p + c) * scale - L);
                    store16(p + c, pv);
                    store16(ds + c, pv * (load16(ds + c) - Dr) * scale); /* dS, pre-scaled */
                }
            }
            mm_acc(dQ + i0 * C, C, dP, BK, 1, K + j0 * C, C, nq, d, nk);      /* dS K */
            mm_acc(dK + j0 * C, C, dP, 1, BK, Q + i0 * C, C, nk, d, nq);      /* dS^T Q */
            mm_acc(dV + j0 * C, C, P, 1, BK, dO + i0 * C, C, nk, d, nq);      /* P^T dO */
        }
    }
}

/* This thread's slice of the caller's scratch: `per` floats per thread. */
static inline float *thread_scratch(float *scratch, size_t per) {
#ifdef _OPENMP
    return scratch + (size_t)omp_get_thread_num() * per;
#else
    (void)per;
    return scratch;
#endif
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
        float *sc = thread_scratch(scratch, per);
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
        float *sc = thread_scratch(scratch, per);
        const size_t b = bh / NH, h = bh % NH, off = b * T * C + h * d;
        backward_head(dq + off, dk + off, dv + off, sc, dout + off, q + off,
                      k + off, v + off, out + off, lse + bh * T, T, C, d);
    }
    return SC_OK;
}
