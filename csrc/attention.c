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
 * scores live one BQ x BK block at a time in per-thread scratch, beside
 * contiguous copies of the head's keys and values (and, in backward, their
 * gradients): O(T d) per thread. The forward pass
 * walks key blocks with an online softmax (running max m and sum l, rescaling
 * the output rows as the max grows). Blocks above the diagonal are skipped;
 * in the diagonal block only the columns j <= i are computed.
 *
 * Threads: one (b,h) pair per task, parallel over B*NH (parallel.h). No BLAS inside (the blocks
 * are far too small for it): the block products run in tile_mm (tile.h), a
 * register-tiled micro-kernel written in vf vectors (vec.h), and this file is compiled once per
 * vector level (AVX-512, AVX2, baseline; csrc/dispatch.c chooses at run time).
 *
 * prec SC_PREC_BF16 (mixed precision): the operands of every block product (Q, K, V,
 * dO, the probabilities P and dS) are rounded to bfloat16, nearest even, as they enter
 * it, and its sums stay float32, as autocast computes them; the softmax, lse, D and the
 * running statistics stay float32. Those products run on VDPBF16PS (bf16.c's sc_bf16_mm),
 * their operands packed in K-pairs: the head's keys and values once per head, the
 * query block once per block, P and dS once per pair of blocks. Two packings serve
 * every product: pairs within rows (a row's bf16 numbers in order: K and V as the A
 * operand of S = K Qt and dPt = V dOt, P and dS as A of dK, dV) and pairs of rows (Qt
 * and dOt as B of those; V, K, Q and dO as B of O += P V, dQ, dK, dV; P and dS as A of
 * O and dQ, read down a column). SC_ERR_UNSUPPORTED without AVX512_BF16.
 *
 * Layout: q, k, v, out, dq, dk, dv are [B,T,C]; head h owns channels
 * [h*d, (h+1)*d). lse is [B,NH,T].
 */
#include "simcore.h"
#include "vec.h"
#include "tile.h"
#include <math.h>
#include "parallel.h"
#include <string.h>

#define BQ 64
#define BK 64 /* == BQ: the diagonal block is the only partially masked one */

/* A head's keys or values packed for the bf16 products, either way (pairs within rows:
 * T rows rounded up to 8 of d/2 words rounded up; pairs of rows: T/2 of d), in floats */
static size_t head_floats(size_t T, size_t d) { return ((T + 7) & ~(size_t)7) * (d + 1); }

size_t attention_scratch_floats(size_t T, size_t C, size_t NH) {
    const size_t d = C / NH, H = head_floats(T, d);
    /* forward: St, Qt, O, m, l, alpha, the head's K and V packed; bf16: Q2, P2;
     * backward: Pt, dSt, Qt, dOt, L, D, the block's Q, dO and dQ, the head's
     * K, V, dK and dV packed; bf16: K2, Q2, dO2, Qb2, dOb2, Pr, Dr, D2 */
    const size_t fwd = BK * BQ + 2 * d * BQ + 3 * BQ + 2 * H + d * BQ + BK * BQ / 2;
    const size_t bwd = 2 * BK * BQ + 5 * d * BQ + 2 * BQ + 3 * H + 2 * T * d + 3 * d * BQ +
                       3 * BK * BQ / 2;
    return fwd > bwd ? fwd : bwd;
}

/* Queries in a block rounded up to whole vectors (BQ is a multiple of VW). */
#define PADV(n) (((n) + VW - 1) & ~(size_t)(VW - 1))

/* Both passes hold the scores transposed, St[j,i] for key j and query i (row
 * length BQ): the query block is transposed once, Qt = scale * Q^T [d,BQ], and
 * St = K Qt needs no copy of the keys; each query's softmax statistics then
 * sit in a vector lane, so the row max/sum over keys are element-wise
 * max/add down the rows, with no horizontal reductions. The products that need
 * S rather than St read it through tile_mm's strides. Columns past nq (the
 * last, partial block) hold stale finite values and are never read back. */

/* Xt[e*ldt + c] = alpha * X[c*ldx + e] for c < n, e < d. */
INLINE void transpose_scaled(float *restrict Xt, size_t ldt, const float *restrict X,
                             size_t ldx, size_t n, size_t d, float alpha) {
    for (size_t e = 0; e < d; e++) /* Xt's rows in order (scattered stores were slower) */
        for (size_t c = 0; c < n; c++) Xt[e * ldt + c] = alpha * X[c * ldx + e];
}

/* In the diagonal block key j sees only queries i >= j: St[j, i < j] = -inf. */
INLINE void mask_diagonal(float *St, size_t nk) {
    for (size_t j = 1; j < nk; j++)
        for (size_t i = 0; i < j; i++) St[j * BQ + i] = -INFINITY;
}

/* Rows [0,n) of X (row stride ldx) into a contiguous [n,d] copy. The heads of
 * q, k, v sit in [B,T,C] with a row stride of C floats, a power of two for the
 * usual widths: a block of 64 such rows maps onto a few L1 sets and the
 * micro-kernel's loads conflict-miss. Contiguous copies (the whole head's keys
 * and values, the current block's queries) cost one pass and remove that. */
INLINE void pack_rows(float *restrict dst, const float *restrict X, size_t ldx, size_t n,
                      size_t d) {
    for (size_t r = 0; r < n; r++) memcpy(dst + r * d, X + r * ldx, d * sizeof(float));
}

/* X[r*ldx + e] += src[r*d + e] */
INLINE void unpack_add(float *restrict X, size_t ldx, const float *restrict src, size_t n,
                       size_t d) {
    for (size_t r = 0; r < n; r++)
        for (size_t e = 0; e < d; e++) X[r * ldx + e] += src[r * d + e];
}

static void forward_head(float *out, float *lse, float *scratch, const float *Q,
                         const float *K, const float *V, int bf16, size_t T, size_t C,
                         size_t d) {
    const size_t H = head_floats(T, d), dh = (d + 1) / 2;
    float *St = scratch, *Qt = St + BK * BQ, *O = Qt + d * BQ, *m = O + BQ * d, *l = m + BQ;
    float *al = l + BQ, *Kp = al + BQ, *Vp = Kp + H;
    /* bf16: Kp holds K in pairs within rows [T][dh], Vp V in pairs of rows [T/2][d],
     * Q2 the block's Qt in pairs of rows [dh][BQ], P2 P in pairs of rows [BK/2][BQ] */
    uint32_t *Kr = (uint32_t *)Kp, *V2 = (uint32_t *)Vp, *Q2 = (uint32_t *)(Vp + H);
    uint32_t *P2 = Q2 + d * BQ;
    memset(scratch, 0, (BK * BQ + d * BQ) * sizeof(float)); /* pad columns finite */
    if (bf16) {
        memset(Kp, 0, (2 * H + d * BQ + BK * BQ / 2) * sizeof(float)); /* pads zero */
        sc_bf16_pack_pairs_in_rows(Kr, dh, K, C, T, d);
        sc_bf16_pack_row_pairs(V2, d, V, C, T, d);
    } else {
        pack_rows(Kp, K, C, T, d);
        pack_rows(Vp, V, C, T, d);
    }
    const float scale = 1.0f / sqrtf((float)d);
    for (size_t i0 = 0; i0 < T; i0 += BQ) {
        const size_t nq = T - i0 < BQ ? T - i0 : BQ, npad = PADV(nq);
        transpose_scaled(Qt, BQ, Q + i0 * C, C, nq, d, scale);
        if (bf16) sc_bf16_pack_row_pairs(Q2, BQ, Qt, BQ, d, BQ);
        for (size_t i = 0; i < BQ; i++) {
            m[i] = -INFINITY;
            l[i] = 0.0f;
        }
        memset(O, 0, nq * d * sizeof(float));
        for (size_t j0 = 0; j0 <= i0; j0 += BK) { /* blocks above the diagonal skipped */
            const int diag = j0 == i0;
            const size_t nk = diag ? nq : BK;
            if (bf16) /* St = K Qt */
                sc_bf16_mm(St, BQ, Kr + j0 * dh, dh, 1, Q2, BQ, nk, nq, dh, 1);
            else
                tile_mm(St, BQ, Kp + j0 * d, d, 1, Qt, BQ, nk, nq, d, 1);
            if (diag) mask_diagonal(St, nk);
            for (size_t c = 0; c < npad; c += VW) { /* VW queries at a time */
                vf mx = vload(m + c), m1 = mx, m2 = mx, m3 = mx; /* four chains, the same max */
                size_t j = 0;
                for (; j + 4 <= nk; j += 4) {
                    mx = vmax(mx, vload(St + j * BQ + c));
                    m1 = vmax(m1, vload(St + (j + 1) * BQ + c));
                    m2 = vmax(m2, vload(St + (j + 2) * BQ + c));
                    m3 = vmax(m3, vload(St + (j + 3) * BQ + c));
                }
                for (; j < nk; j++) mx = vmax(mx, vload(St + j * BQ + c));
                mx = vmax(vmax(mx, m1), vmax(m2, m3));
                vf sum = {0};
                for (size_t j = 0; j < nk; j++) {
                    const vf p = vexp(vload(St + j * BQ + c) - mx);
                    vstore(St + j * BQ + c, p);
                    sum += p;
                }
                const vf alpha = vexp(vload(m + c) - mx); /* 0 on the first block */
                vstore(l + c, vload(l + c) * alpha + sum);
                vstore(m + c, mx);
                vstore(al + c, alpha);
            }
            if (j0 > 0) /* rescale the running output rows: O *= alpha */
                for (size_t r = 0; r < nq; r++)
                    for (size_t e = 0; e < d; e++) O[r * d + e] *= al[r];
            if (bf16) { /* O += St^T V, P rounded after its sums */
                sc_bf16_pack_row_pairs(P2, BQ, St, BQ, nk, BQ);
                sc_bf16_mm(O, d, P2, 1, BQ, V2 + j0 / 2 * d, d, nq, d, (nk + 1) / 2, 0);
            } else
                tile_mm(O, d, St, 1, BQ, Vp + j0 * d, d, nq, d, nk, 0);
        }
        for (size_t r = 0; r < nq; r++) {
            const float inv = 1.0f / l[r];
            for (size_t e = 0; e < d; e++) out[(i0 + r) * C + e] = O[r * d + e] * inv;
            lse[i0 + r] = m[r] + logf(l[r]);
        }
    }
}

static void backward_head(float *dQ, float *dK, float *dV, float *scratch,
                          const float *dO, const float *Q, const float *K,
                          const float *V, const float *O, const float *lse, int bf16,
                          size_t T, size_t C, size_t d) {
    const size_t H = head_floats(T, d), dh = (d + 1) / 2;
    float *Pt = scratch, *dSt = Pt + BK * BQ, *Qt = dSt + BK * BQ, *dOt = Qt + d * BQ;
    float *L = dOt + d * BQ, *D = L + BQ, *Qb = D + BQ, *dOb = Qb + BQ * d, *dQb = dOb + BQ * d;
    float *Kp = dQb + BQ * d, *Vp = Kp + H, *dKp = Vp + H, *dVp = dKp + T * d;
    /* bf16: Kp and Vp hold K and V in pairs within rows [T][dh], K2 K in pairs of rows
     * [T/2][d]; the block's Qt and dOt in pairs of rows [dh][BQ] (Q2, dO2), its Q and dO
     * [BQ/2][d] (Qb2, dOb2); P and dS in pairs within rows [BK][BQ/2] (Pr, Dr), dS in
     * pairs of rows [BK/2][BQ] (D2) */
    uint32_t *Kr = (uint32_t *)Kp, *Vr = (uint32_t *)Vp, *K2 = (uint32_t *)(dVp + T * d);
    uint32_t *Q2 = K2 + H, *dO2 = Q2 + d * BQ, *Qb2 = dO2 + d * BQ, *dOb2 = Qb2 + BQ / 2 * d;
    uint32_t *Pr = dOb2 + BQ / 2 * d, *Dr = Pr + BK * BQ / 2, *D2 = Dr + BK * BQ / 2;
    memset(scratch, 0, (2 * BK * BQ + 2 * d * BQ + 2 * BQ) * sizeof(float));
    if (bf16) {
        memset(Kp, 0, 2 * H * sizeof(float)); /* pads zero */
        memset(K2, 0, (H + 3 * d * BQ + 3 * BK * BQ / 2) * sizeof(float));
        sc_bf16_pack_pairs_in_rows(Kr, dh, K, C, T, d);
        sc_bf16_pack_pairs_in_rows(Vr, dh, V, C, T, d);
        sc_bf16_pack_row_pairs(K2, d, K, C, T, d);
    } else {
        pack_rows(Kp, K, C, T, d);
        pack_rows(Vp, V, C, T, d);
    }
    memset(dKp, 0, 2 * T * d * sizeof(float)); /* dKp, dVp */
    const float scale = 1.0f / sqrtf((float)d);
    for (size_t i0 = 0; i0 < T; i0 += BQ) {
        const size_t nq = T - i0 < BQ ? T - i0 : BQ, npad = PADV(nq), nqp = (nq + 1) / 2;
        transpose_scaled(Qt, BQ, Q + i0 * C, C, nq, d, scale);
        transpose_scaled(dOt, BQ, dO + i0 * C, C, nq, d, 1.0f);
        if (!bf16) pack_rows(Qb, Q + i0 * C, C, nq, d); /* bf16: packed from Q below */
        pack_rows(dOb, dO + i0 * C, C, nq, d);
        memset(dQb, 0, nq * d * sizeof(float));
        for (size_t r = 0; r < nq; r++) {
            L[r] = lse[i0 + r];
            D[r] = dot(O + (i0 + r) * C, dOb + r * d, d);
        }
        if (bf16) { /* the products' operands (D above from float32 dO) */
            sc_bf16_pack_row_pairs(Q2, BQ, Qt, BQ, d, BQ);
            sc_bf16_pack_row_pairs(dO2, BQ, dOt, BQ, d, BQ);
            sc_bf16_pack_row_pairs(Qb2, d, Q + i0 * C, C, nq, d);
            sc_bf16_pack_row_pairs(dOb2, d, dOb, d, nq, d);
        }
        for (size_t j0 = 0; j0 <= i0; j0 += BK) {
            const int diag = j0 == i0;
            const size_t nk = diag ? nq : BK;
            if (bf16) {
                sc_bf16_mm(Pt, BQ, Kr + j0 * dh, dh, 1, Q2, BQ, nk, nq, dh, 1);   /* St = K Qt */
                sc_bf16_mm(dSt, BQ, Vr + j0 * dh, dh, 1, dO2, BQ, nk, nq, dh, 1); /* dPt = V dO^T */
            } else {
                tile_mm(Pt, BQ, Kp + j0 * d, d, 1, Qt, BQ, nk, nq, d, 1);
                tile_mm(dSt, BQ, Vp + j0 * d, d, 1, dOt, BQ, nk, nq, d, 1);
            }
            if (diag) mask_diagonal(Pt, nk);
            for (size_t j = 0; j < nk; j++)
                for (size_t c = 0; c < npad; c += VW) {
                    float *p = Pt + j * BQ + c, *ds = dSt + j * BQ + c;
                    const vf pv = vexp(vload(p) - vload(L + c));
                    vstore(p, pv);
                    vstore(ds, pv * (vload(ds) - vload(D + c)) * scale); /* dSt, pre-scaled */
                }
            if (bf16) {
                sc_bf16_pack_pairs_in_rows(Pr, BQ / 2, Pt, BQ, nk, nq);
                sc_bf16_pack_pairs_in_rows(Dr, BQ / 2, dSt, BQ, nk, nq);
                sc_bf16_pack_row_pairs(D2, BQ, dSt, BQ, nk, BQ);
                sc_bf16_mm(dQb, d, D2, 1, BQ, K2 + j0 / 2 * d, d, nq, d, (nk + 1) / 2, 0); /* dS K */
                sc_bf16_mm(dKp + j0 * d, d, Dr, BQ / 2, 1, Qb2, d, nk, d, nqp, 0);     /* dS^T Q */
                sc_bf16_mm(dVp + j0 * d, d, Pr, BQ / 2, 1, dOb2, d, nk, d, nqp, 0);    /* P^T dO */
            } else {
                const float *Kj = Kp + j0 * d;
                tile_mm(dQb, d, dSt, 1, BQ, Kj, d, nq, d, nk, 0);          /* dS K */
                tile_mm(dKp + j0 * d, d, dSt, BQ, 1, Qb, d, nk, d, nq, 0); /* dS^T Q */
                tile_mm(dVp + j0 * d, d, Pt, BQ, 1, dOb, d, nk, d, nq, 0); /* P^T dO */
            }
        }
        unpack_add(dQ + i0 * C, C, dQb, nq, d);
    }
    unpack_add(dK, C, dKp, T, d);
    unpack_add(dV, C, dVp, T, d);
}

/* One call's arguments, for the team: each thread takes (b,h) pairs from `next`
 * (schedule(dynamic, 1)) into its own slice of the scratch. dq, dk, dv NULL: forward. */
typedef struct {
    float *out, *lse, *dq, *dk, *dv, *scratch;
    const float *dout, *q, *k, *v, *o, *L;
    size_t B, T, C, NH, per;
    size_t next;
    int bf16; /* the products' operands rounded to bfloat16 (prec SC_PREC_BF16) */
} Heads;

static void attention_heads(void *ctx, size_t t, size_t nt) {
    (void)nt;
    Heads *a = ctx;
    const size_t C = a->C, NH = a->NH, T = a->T, d = C / NH;
    float *sc = a->scratch + t * a->per;
    for (size_t bh; (bh = sc_next_task(&a->next)) < a->B * NH;) {
        const size_t b = bh / NH, h = bh % NH, off = b * T * C + h * d;
        if (a->dq)
            backward_head(a->dq + off, a->dk + off, a->dv + off, sc, a->dout + off, a->q + off,
                          a->k + off, a->v + off, a->o + off, a->L + bh * T, a->bf16, T, C, d);
        else
            forward_head(a->out + off, a->lse + bh * T, sc, a->q + off, a->k + off, a->v + off,
                         a->bf16, T, C, d);
    }
}

/* out: OUT [B,T,C]; lse: OUT [B,NH,T]; scratch: [nthreads * scratch_floats];
 * q, k, v: IN [B,T,C] */
int attention_forward(float *out, float *lse, float *scratch, const float *q,
                      const float *k, const float *v, int prec, size_t B, size_t T,
                      size_t C, size_t NH, int nthreads) {
    if (nthreads < 1) return SC_ERR_THREADS;
    if (prec == SC_PREC_BF16 && !sc_bf16_supported()) return SC_ERR_UNSUPPORTED;
    Heads a = {out, lse, NULL, NULL, NULL, scratch, NULL, q, k, v, NULL, NULL,
               B, T, C, NH, attention_scratch_floats(T, C, NH), 0, prec == SC_PREC_BF16};
    sc_parallel(threads_for(B * NH, nthreads), attention_heads, &a);
    return SC_OK;
}

/* dq, dk, dv: INOUT [B,T,C]; scratch as forward; dout, q, k, v, out: IN [B,T,C];
 * lse: IN [B,NH,T] */
int attention_backward(float *dq, float *dk, float *dv, float *scratch,
                       const float *dout, const float *q, const float *k,
                       const float *v, const float *out, const float *lse, int prec,
                       size_t B, size_t T, size_t C, size_t NH, int nthreads) {
    if (nthreads < 1) return SC_ERR_THREADS;
    if (prec == SC_PREC_BF16 && !sc_bf16_supported()) return SC_ERR_UNSUPPORTED;
    Heads a = {NULL, NULL, dq, dk, dv, scratch, dout, q, k, v, out, lse,
               B, T, C, NH, attention_scratch_floats(T, C, NH), 0, prec == SC_PREC_BF16};
    sc_parallel(threads_for(B * NH, nthreads), attention_heads, &a);
    return SC_OK;
}
