/* decode.c: sampling's forward pass, one new position of every sequence at a time,
 * with a key/value cache (the training pass is in the per-layer files).
 *
 * Caches, per layer, for Tmax positions (a multiple of KB = 16), d = C/NH:
 *   kcache [B, NH, Tmax/KB, d, KB]  keys in blocks of 16 positions, each block
 *                                   transposed: the scores of 16 positions are
 *                                   d FMAs of 16 floats (16/VW vectors) over one
 *                                   contiguous 16d-float run
 *   vcache [B, NH, Tmax, d]         values as rows: the weighted sum is a
 *                                   stream of axpys over contiguous rows
 * Every (b,h) owns one contiguous stretch of each cache, so a step streams
 * through memory. At batch 100 the `small` caches reach 320 MB: sampling is
 * bound by how fast the caches stream, and the loops below are written so
 * that each cache line is loaded once per step and used whole.
 *
 * attention_decode: out[b] = softmax(q[b] . K[0..pos,b] / sqrt(d)) V[0..pos,b]
 * block_decode:     one transformer block for one position of each sequence:
 *     h = norm1(x);  q, k, v = h wq, h wk, h wv;  cache[pos] = k, v
 *     x += attention_decode(q) wo
 *     h = norm2(x);  x += silu(h w1) w2
 *   Sequences are independent, so the batch is cut into row slices, one per
 *   thread, and each thread takes its slice through the whole block with
 *   single-threaded GEMMs: one parallel region per call and no barrier inside
 *   (at batch 100 the GEMMs are too small to split well any other way).
 */
#include "simcore.h"
#include "vec.h"
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define KB 16 /* positions per key block: a multiple of VW at every level */

/* Cache of sequence b, head h: where its keys / values start. */
INLINE size_t kv_offset(size_t b, size_t h, size_t NH, size_t Tmax, size_t d) {
    return (b * NH + h) * Tmax * d;
}

/* kcache, vcache: INOUT (layouts above); k, v: IN [B,C]. Stores position pos. */
void kv_cache_write(float *kcache, float *vcache, const float *k, const float *v,
                    size_t pos, size_t B, size_t Tmax, size_t C, size_t NH) {
    const size_t d = C / NH;
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < NH; h++) {
            const size_t off = kv_offset(b, h, NH, Tmax, d);
            float *kb = kcache + off + (pos / KB) * d * KB + pos % KB;
            for (size_t e = 0; e < d; e++) kb[e * KB] = k[b * C + h * d + e];
            memcpy(vcache + off + pos * d, v + b * C + h * d, d * sizeof(float));
        }
}

/* s0[0..KB) = scale * q . keys of block b0, and s1 likewise for b1: each q[e]
 * feeds both blocks (1.3x over one block at a time, measured at B=1). A block
 * row is KV vectors; NP partial sums over e per block hide the FMA latency.
 * Either way 2 * NP * KV = 8 accumulators, at every vector level. */
#define KV (KB / VW)
#define NP (VW / 4)
INLINE void scores_pair(float *s0, float *s1, const float *b0, const float *b1,
                        const float *q, size_t d, float scale) {
    vf a[NP][KV], c[NP][KV];
    UNROLL for (int u = 0; u < NP; u++)
        UNROLL for (int k = 0; k < KV; k++) a[u][k] = c[u][k] = (vf){0};
    size_t e = 0;
    for (; e + NP <= d; e += NP)
        UNROLL for (int u = 0; u < NP; u++)
            UNROLL for (int k = 0; k < KV; k++) {
                a[u][k] += q[e + u] * vload(b0 + (e + u) * KB + k * VW);
                c[u][k] += q[e + u] * vload(b1 + (e + u) * KB + k * VW);
            }
    for (; e < d; e++)
        UNROLL for (int k = 0; k < KV; k++) {
            a[0][k] += q[e] * vload(b0 + e * KB + k * VW);
            c[0][k] += q[e] * vload(b1 + e * KB + k * VW);
        }
    UNROLL for (int k = 0; k < KV; k++) {
        vf sa = a[0][k], sc = c[0][k];
        UNROLL for (int u = 1; u < NP; u++) {
            sa += a[u][k];
            sc += c[u][k];
        }
        vstore(s0 + k * VW, sa * scale);
        vstore(s1 + k * VW, sc * scale);
    }
}

/* One query against positions 0..pos of one (b,h). s: scratch [Tmax rounded up to KB]. */
static void decode_head(float *restrict out, float *restrict s, const float *restrict q,
                        const float *restrict Kb, const float *restrict V, size_t pos,
                        size_t d) {
    const float scale = 1.0f / sqrtf((float)d);
    const size_t n = pos + 1, nb = (n + KB - 1) / KB;
    /* scores, two blocks of 16 at a time (an odd last block is paired with itself) */
    for (size_t jb = 0; jb < nb; jb += 2) {
        const size_t jc = jb + 1 < nb ? jb + 1 : jb;
        scores_pair(s + jb * KB, s + jc * KB, Kb + jb * d * KB, Kb + jc * d * KB, q, d, scale);
    }
    for (size_t j = n; j < nb * KB; j++) s[j] = -INFINITY; /* past pos: not yet written */
    vf mv = splat(-INFINITY);
    for (size_t j = 0; j < nb * KB; j += VW) mv = vmax(mv, vload(s + j));
    const float mx = hmax(mv);
    vf vsum = {0};
    for (size_t j = 0; j < nb * KB; j += VW) {
        const vf p = vexp(vload(s + j) - mx);
        vstore(s + j, p);
        vsum += p;
    }
    const float inv = 1.0f / hsum(vsum);
    /* out = P V: two vectors of columns at a time, 4 positions per round in
     * separate accumulators (8 in all); one pass over V per 2 VW columns */
    size_t e0 = 0;
    for (; e0 + 2 * VW <= d; e0 += 2 * VW) {
        vf a[8];
        UNROLL for (int u = 0; u < 8; u++) a[u] = (vf){0};
        size_t j = 0;
        for (; j + 4 <= n; j += 4)
            UNROLL for (int u = 0; u < 4; u++) {
                const float *vr = V + (j + u) * d + e0;
                a[2 * u] += s[j + u] * vload(vr);
                a[2 * u + 1] += s[j + u] * vload(vr + VW);
            }
        for (; j < n; j++) {
            a[0] += s[j] * vload(V + j * d + e0);
            a[1] += s[j] * vload(V + j * d + e0 + VW);
        }
        vstore(out + e0, ((a[0] + a[2]) + (a[4] + a[6])) * inv);
        vstore(out + e0 + VW, ((a[1] + a[3]) + (a[5] + a[7])) * inv);
    }
    for (; e0 + VW <= d; e0 += VW) {
        vf a[4];
        UNROLL for (int u = 0; u < 4; u++) a[u] = (vf){0};
        size_t j = 0;
        for (; j + 4 <= n; j += 4)
            UNROLL for (int u = 0; u < 4; u++) a[u] += s[j + u] * vload(V + (j + u) * d + e0);
        for (; j < n; j++) a[0] += s[j] * vload(V + j * d + e0);
        vstore(out + e0, ((a[0] + a[1]) + (a[2] + a[3])) * inv);
    }
    for (; e0 < d; e0++) { /* d % VW leftover columns */
        float acc = 0.0f;
        for (size_t j = 0; j < n; j++) acc += s[j] * V[j * d + e0];
        out[e0] = acc * inv;
    }
}

/* Rows b0..b1 of attention_decode, on the calling thread. */
static void decode_rows(float *out, float *s, const float *q, const float *kcache,
                        const float *vcache, size_t pos, size_t b0, size_t b1,
                        size_t Tmax, size_t C, size_t NH) {
    const size_t d = C / NH;
    for (size_t b = b0; b < b1; b++)
        for (size_t h = 0; h < NH; h++) {
            const size_t off = kv_offset(b, h, NH, Tmax, d);
            decode_head(out + b * C + h * d, s, q + b * C + h * d, kcache + off,
                        vcache + off, pos, d);
        }
}

size_t attention_decode_scratch_floats(size_t Tmax) { return (Tmax + KB - 1) / KB * KB; }

/* The calling thread's rows [b0,b1) of a batch of B, cut into one slice per thread
 * of the current team, and its slot of a scratch with `per` floats per thread. */
INLINE float *thread_share(float *scratch, size_t per, size_t B, size_t *b0, size_t *b1) {
#ifdef _OPENMP
    const size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
#else
    const size_t t = 0, nt = 1;
#endif
    *b0 = B * t / nt;
    *b1 = B * (t + 1) / nt;
    return scratch + t * per;
}

/* never more threads than rows */
INLINE int threads_for(size_t B, int nthreads) { return (size_t)nthreads < B ? nthreads : (int)B; }

/* out: OUT [B,C]; scratch: [nthreads * attention_decode_scratch_floats(Tmax)];
 * q: IN [B,C]; kcache, vcache: IN, positions 0..pos filled; pos < Tmax, Tmax % 16 == 0 */
int attention_decode(float *out, float *scratch, const float *q, const float *kcache,
                     const float *vcache, size_t pos, size_t B, size_t Tmax,
                     size_t C, size_t NH, int nthreads) {
    if (nthreads < 1) return SC_ERR_THREADS;
    if (Tmax % KB) return SC_ERR_CACHE_LEN;
    if (pos >= Tmax) return SC_ERR_POSITION;
    const size_t per = attention_decode_scratch_floats(Tmax);
#pragma omp parallel num_threads(threads_for(B, nthreads)) if (B * NH * pos > 4096)
    {
        size_t b0, b1;
        float *s = thread_share(scratch, per, B, &b0, &b1);
        decode_rows(out, s, q, kcache, vcache, pos, b0, b1, Tmax, C, NH);
    }
    return SC_OK;
}

/* ---- one transformer block ------------------------------------------------------ */

size_t block_decode_scratch_floats(size_t B, size_t C, size_t H, size_t Tmax, int nthreads) {
    /* per thread: h, q, k, v, att [rows,C], rstd [rows], hpre, hact [rows,H], scores */
    const size_t rows = (B + (size_t)nthreads - 1) / (size_t)nthreads;
    return (size_t)nthreads * (rows * (5 * C + 1 + 2 * H) + attention_decode_scratch_floats(Tmax));
}

/* out = norm(x) over R rows, or a copy when there is no norm weight */
static void norm_rows(float *out, float *rstd, const float *x, const float *w, size_t R,
                      size_t C) {
    if (w)
        rmsnorm_forward(out, rstd, x, w, R, C);
    else
        memcpy(out, x, R * C * sizeof(float));
}

/* One thread's rows [b0,b1) through the block; sc: this thread's scratch. */
static int block_rows(float *x, float *kcache, float *vcache, float *sc,
                      const BlockWeights *w, size_t pos, size_t b0, size_t b1,
                      size_t Tmax, size_t C, size_t H, size_t NH) {
    const size_t R = b1 - b0;
    if (R == 0) return SC_OK;
    float *h = sc, *q = h + R * C, *k = q + R * C, *v = k + R * C, *att = v + R * C;
    float *rstd = att + R * C, *hpre = rstd + R, *hact = hpre + R * H, *s = hact + R * H;
    float *xr = x + b0 * C;
    const size_t d = C / NH, cstride = NH * Tmax * d; /* one sequence's cache */
    int rc;
    /* the projections and the MLP are the training pass's kernels: with a few rows
     * they run on this thread (linear.c, SMALL_N), beside the other threads' rows */
    norm_rows(h, rstd, xr, w->norm1, R, C);
    if ((rc = linear_forward(q, h, w->wq, 0.0f, R, C, C))) return rc;
    if ((rc = linear_forward(k, h, w->wk, 0.0f, R, C, C))) return rc;
    if ((rc = linear_forward(v, h, w->wv, 0.0f, R, C, C))) return rc;
    float *kc = kcache + b0 * cstride, *vc = vcache + b0 * cstride;
    kv_cache_write(kc, vc, k, v, pos, R, Tmax, C, NH);
    decode_rows(att, s, q, kc, vc, pos, 0, R, Tmax, C, NH);
    if ((rc = linear_forward(xr, att, w->wo, 1.0f, R, C, C))) return rc;
    norm_rows(h, rstd, xr, w->norm2, R, C);
    return mlp_forward(xr, hpre, hact, h, w->w1, w->w2, 1.0f, R, C, H, C);
}

/* x: INOUT [B,C]; kcache, vcache: INOUT (layouts above), positions 0..pos-1 filled,
 * pos written here; scratch: [block_decode_scratch_floats(B, C, H, Tmax, nthreads)];
 * w: this layer's weights (norm1/norm2 NULL when the model has no norm). */
int block_decode(float *x, float *kcache, float *vcache, float *scratch,
                 const BlockWeights *w, size_t pos, size_t B, size_t Tmax, size_t C,
                 size_t H, size_t NH, int nthreads) {
    if (nthreads < 1) return SC_ERR_THREADS;
    if (Tmax % KB) return SC_ERR_CACHE_LEN;
    if (pos >= Tmax) return SC_ERR_POSITION;
    const size_t per = block_decode_scratch_floats(B, C, H, Tmax, nthreads) / (size_t)nthreads;
    int err = SC_OK;
#pragma omp parallel num_threads(threads_for(B, nthreads))
    {
        size_t b0, b1;
        float *sc = thread_share(scratch, per, B, &b0, &b1);
        const int rc = block_rows(x, kcache, vcache, sc, w, pos, b0, b1, Tmax, C, H, NH);
        if (rc) {
#pragma omp atomic write
            err = rc;
        }
    }
    return err;
}
