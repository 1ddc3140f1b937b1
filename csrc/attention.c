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
    /* forward: St, Qt, m, l, alpha; backward: Pt, dSt, Qt, dOt, L, D */
    return 2 * BQ * BK + 2 * d * BQ + 4 * BQ;
}

/* Cm[M,N] += op(A)[M,K] @ Bm[K,N], row-major. op(A)[i,k] = A[i*si + k*sk], so
 * the same kernel does A (si = lda, sk = 1) and A^T (si = 1, sk = lda) without
 * a transposed copy. A 4 x 32 tile of Cm lives in eight vector registers while
 * the kernel streams one row of Bm and four scalars of op(A) per k; narrower
 * edges take a 16-wide and then a scalar path. overwrite: Cm = instead of +=. */
#define MR 4
INLINE void put16(float *p, v16 x, int overwrite) { store16(p, overwrite ? x : load16(p) + x); }
INLINE void mm_acc(float *restrict Cm, size_t ldc, const float *restrict A, size_t si,
                    size_t sk, const float *restrict Bm, size_t ldb, size_t M, size_t N,
                    size_t K, int overwrite) {
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
            put16(c0 + j, x0, overwrite); put16(c0 + j + 16, y0, overwrite);
            put16(c1 + j, x1, overwrite); put16(c1 + j + 16, y1, overwrite);
            put16(c2 + j, x2, overwrite); put16(c2 + j + 16, y2, overwrite);
            put16(c3 + j, x3, overwrite); put16(c3 + j + 16, y3, overwrite);
        }
        for (; j + 16 <= N; j += 16) {
            v16 x0 = {0}, x1 = {0}, x2 = {0}, x3 = {0};
            for (size_t k = 0; k < K; k++) {
                const v16 bx = load16(Bm + k * ldb + j);
                const size_t o = k * sk;
                x0 += a0[o] * bx; x1 += a1[o] * bx; x2 += a2[o] * bx; x3 += a3[o] * bx;
            }
            put16(c0 + j, x0, overwrite); put16(c1 + j, x1, overwrite);
            put16(c2 + j, x2, overwrite); put16(c3 + j, x3, overwrite);
        }
        for (; j < N; j++) {
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            for (size_t k = 0; k < K; k++) {
                const float b = Bm[k * ldb + j];
                const size_t o = k * sk;
                s0 += a0[o] * b; s1 += a1[o] * b; s2 += a2[o] * b; s3 += a3[o] * b;
            }
            if (overwrite) {
                c0[j] = s0; c1[j] = s1; c2[j] = s2; c3[j] = s3;
            } else {
                c0[j] += s0; c1[j] += s1; c2[j] += s2; c3[j] += s3;
            }
        }
    }
    for (; i < M; i++) {
        float *c = Cm + i * ldc;
        if (overwrite) memset(c, 0, N * sizeof(float));
        for (size_t k = 0; k < K; k++) {
            const float a = A[i * si + k * sk];
            const float *b = Bm + k * ldb;
            for (size_t j = 0; j < N; j++) c[j] += a * b[j];
        }
    }
}

/* Queries in a block rounded up to whole vectors (BQ is a multiple of 16). */
#define PAD16(n) (((n) + 15) & ~(size_t)15)

/* Both passes hold the scores transposed, St[j,i] for key j and query i (row
 * length BQ): the query block is transposed once, Qt = scale * Q^T [d,BQ], and
 * St = K Qt needs no copy of the keys; each query's softmax statistics then
 * sit in a vector lane, so the row max/sum over keys are element-wise
 * max/add down the rows, with no horizontal reductions. The products that need
 * S rather than St read it through mm_acc's strides. Columns past nq (the
 * last, partial block) hold stale finite values and are never read back. */

/* Xt[e*ldt + c] = alpha * X[c*ldx + e] for c < n, e < d. */
INLINE void transpose_scaled(float *restrict Xt, size_t ldt, const float *restrict X,
                             size_t ldx, size_t n, size_t d, float alpha) {
    for (size_t c = 0; c < n; c++)
        for (size_t e = 0; e < d; e++) Xt[e * ldt + c] = alpha * X[c * ldx + e];
}

/* In the diagonal block key j sees only queries i >= j: St[j, i < j] = -inf. */
INLINE void mask_diagonal(float *St, size_t nk) {
    for (size_t j = 1; j < nk; j++)
        for (size_t i = 0; i < j; i++) St[j * BQ + i] = -INFINITY;
}

MULTIVERSION
static void forward_head(float *out, float *lse, float *scratch, const float *Q,
                         const float *K, const float *V, size_t T, size_t C,
                         size_t d) {
    float *St = scratch, *Qt = St + BK * BQ, *m = Qt + d * BQ, *l = m + BQ, *al = l + BQ;
    memset(scratch, 0, (BK * BQ + d * BQ) * sizeof(float)); /* pad columns finite */
    const float scale = 1.0f / sqrtf((float)d);
    for (size_t i0 = 0; i0 < T; i0 += BQ) {
        const size_t nq = T - i0 < BQ ? T - i0 : BQ, npad = PAD16(nq);
        float *O = out + i0 * C;
        transpose_scaled(Qt, BQ, Q + i0 * C, C, nq, d, scale);
        for (size_t i = 0; i < BQ; i++) {
            m[i] = -INFINITY;
            l[i] = 0.0f;
        }
        for (size_t r = 0; r < nq; r++) memset(O + r * C, 0, d * sizeof(float));
        for (size_t j0 = 0; j0 <= i0; j0 += BK) { /* blocks above the diagonal skipped */
            const int diag = j0 == i0;
            const size_t nk = diag ? nq : BK;
            mm_acc(St, BQ, K + j0 * C, C, 1, Qt, BQ, nk, nq, d, 1); /* St = K Qt */
            if (diag) mask_diagonal(St, nk);
            for (size_t c = 0; c < npad; c += 16) { /* 16 queries at a time */
                v16 mx = load16(m + c);
                for (size_t j = 0; j < nk; j++) mx = max16(mx, load16(St + j * BQ + c));
                v16 sum = {0};
                for (size_t j = 0; j < nk; j++) {
                    const v16 p = exp16(load16(St + j * BQ + c) - mx);
                    store16(St + j * BQ + c, p);
                    sum += p;
                }
                const v16 alpha = exp16(load16(m + c) - mx); /* 0 on the first block */
                store16(l + c, load16(l + c) * alpha + sum);
                store16(m + c, mx);
                store16(al + c, alpha);
            }
            if (j0 > 0) /* rescale the running output rows: O *= alpha */
                for (size_t r = 0; r < nq; r++)
                    for (size_t e = 0; e < d; e++) O[r * C + e] *= al[r];
            mm_acc(O, C, St, 1, BQ, V + j0 * C, C, nq, d, nk, 0); /* O += St^T V */
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
    float *Pt = scratch, *dSt = Pt + BK * BQ, *Qt = dSt + BK * BQ, *dOt = Qt + d * BQ;
    float *L = dOt + d * BQ, *D = L + BQ;
    memset(scratch, 0, (2 * BK * BQ + 2 * d * BQ + 2 * BQ) * sizeof(float));
    const float scale = 1.0f / sqrtf((float)d);
    for (size_t i0 = 0; i0 < T; i0 += BQ) {
        const size_t nq = T - i0 < BQ ? T - i0 : BQ, npad = PAD16(nq);
        transpose_scaled(Qt, BQ, Q + i0 * C, C, nq, d, scale);
        transpose_scaled(dOt, BQ, dO + i0 * C, C, nq, d, 1.0f);
        for (size_t r = 0; r < nq; r++) {
            L[r] = lse[i0 + r];
            D[r] = dot(O + (i0 + r) * C, dO + (i0 + r) * C, d);
        }
        for (size_t j0 = 0; j0 <= i0; j0 += BK) {
            const int diag = j0 == i0;
            const size_t nk = diag ? nq : BK;
            mm_acc(Pt, BQ, K + j0 * C, C, 1, Qt, BQ, nk, nq, d, 1);   /* St = K Qt */
            mm_acc(dSt, BQ, V + j0 * C, C, 1, dOt, BQ, nk, nq, d, 1); /* dPt = V dO^T */
            if (diag) mask_diagonal(Pt, nk);
            for (size_t j = 0; j < nk; j++)
                for (size_t c = 0; c < npad; c += 16) {
                    float *p = Pt + j * BQ + c, *ds = dSt + j * BQ + c;
                    const v16 pv = exp16(load16(p) - load16(L + c));
                    store16(p, pv);
                    store16(ds, pv * (load16(ds) - load16(D + c)) * scale); /* dSt, pre-scaled */
                }
            mm_acc(dQ + i0 * C, C, dSt, 1, BQ, K + j0 * C, C, nq, d, nk, 0); /* dS K */
            mm_acc(dK + j0 * C, C, dSt, BQ, 1, Q + i0 * C, C, nk, d, nq, 0); /* dS^T Q */
            mm_acc(dV + j0 * C, C, Pt, BQ, 1, dO + i0 * C, C, nk, d, nq, 0); /* P^T dO */
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
