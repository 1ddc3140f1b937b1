/* block.c: one transformer block, written once: for training (all T positions of B
 * sequences, forward and backward) and for sampling (one new position of each
 * sequence, against a key/value cache).
 *
 *   xn1  = norm1(x)                       (rmsnorm.c; x itself without a norm)
 *   q, k, v = xn1 wq, xn1 wk, xn1 wv      (linear.c)
 *   att  = causal softmax(q k^T / sqrt(d)) v, per head   (attention.c; decode.c)
 *   xmid = x + att wo
 *   xn2  = norm2(xmid)
 *   xout = xmid + silu(xn2 w1) w2         (mlp.c)
 * prec (SC_PREC_*) is the precision of every product's operands: the projections', the
 * MLP's and the attention's (attention.c).
 *
 * Training keeps what backward needs in one arena per block, `acts`, laid out by
 * block_acts below (block_acts_floats floats): q, k, v, att, xmid [N,C], hpre [N,H]
 * (h_act is recomputed), lse [B,NH,T], and with a norm xn1, xn2 [N,C], rstd1, rstd2
 * [N]. Without a norm xn1 is x and xn2 is xmid. The residual stream (x, xout) is the
 * caller's. Backward walks the same steps in reverse:
 *   dx (INOUT) holds d loss / d xout on entry and d loss / d x on return; the
 *   weights' gradients are added into g (+=).
 *
 * Completion's prefill (block_prefill) is the training pass's block over the known
 * positions, whose keys and values it then stores in the cache.
 *
 * Sampling (block_decode) runs the same composition on one position of every
 * sequence, in place on x: the batch is cut into row slices, one per thread, and
 * each thread takes its slice through the whole block with single-threaded GEMMs
 * (one parallel region per call and no barrier inside: at batch 100 the GEMMs are
 * too small to split well any other way).
 */
#include "simcore.h"
#include "parallel.h"
#include <string.h>

/* ---- the two halves of a block, shared by training and sampling ---------------- */

/* Returns norm(x) [R,C], written into out, or x itself when gain is NULL (no norm). */
static const float *norm_or_self(float *out, float *rstd, const float *x, const float *gain,
                                 size_t R, size_t C) {
    if (!gain) return x;
    rmsnorm_forward(out, rstd, x, gain, R, C);
    return out;
}

/* out [R,Cout] = x [R,Cin] @ w + beta * out: the weight packed for bf16 (wp, sampling) or
 * as it is (linear.c at prec) */
static int product(float *out, const float *x, const float *w, const uint32_t *wp, float beta,
                   int prec, size_t R, size_t Cin, size_t Cout) {
    if (wp) return sc_bf16_gemm_packed(out, x, wp, beta, R, Cout, Cin);
    return linear_forward(out, x, w, beta, prec, R, Cin, Cout);
}

/* q, k, v: OUT [R,C] = xn @ wq, wk, wv; p: the weights packed, or NULL */
static int block_qkv(float *q, float *k, float *v, const float *xn, const BlockWeights *w,
                     const BlockPacked *p, int prec, size_t R, size_t C) {
    int rc;
    if ((rc = product(q, xn, w->wq, p ? p->wq : NULL, 0.0f, prec, R, C, C))) return rc;
    if ((rc = product(k, xn, w->wk, p ? p->wk : NULL, 0.0f, prec, R, C, C))) return rc;
    return product(v, xn, w->wv, p ? p->wv : NULL, 0.0f, prec, R, C, C);
}

/* xmid = x + att wo; xout = xmid + MLP(norm2(xmid)). In place (sampling) xout, xmid
 * and x are one array; then xn2 receives a copy of xmid without a norm, since the
 * MLP's input must not be its output. xn2, rstd2, hpre, hact: OUT [R,C], [R], [R,H]. */
static int block_out(float *xout, float *xmid, float *xn2, float *rstd2, float *hpre,
                     float *hact, const float *x, const float *att, const BlockWeights *w,
                     const BlockPacked *p, int prec, size_t R, size_t C, size_t H) {
    int rc;
    if (xmid != x) memcpy(xmid, x, R * C * sizeof(float));
    if ((rc = product(xmid, att, w->wo, p ? p->wo : NULL, 1.0f, prec, R, C, C))) return rc;
    const float *h = norm_or_self(xn2, rstd2, xmid, w->mlp_norm, R, C);
    if (h == xout) h = memcpy(xn2, xmid, R * C * sizeof(float));
    if (xout != xmid) memcpy(xout, xmid, R * C * sizeof(float));
    if (!p) return mlp_forward(xout, hpre, hact, h, w->w1, w->w2, 1.0f, prec, R, C, H, C);
    if ((rc = product(hpre, h, NULL, p->w1, 0.0f, prec, R, C, H))) return rc; /* mlp.c's steps */
    silu_forward(hact, hpre, R * H);
    return product(xout, hact, NULL, p->w2, 1.0f, prec, R, H, C);
}

/* ---- training: all positions ------------------------------------------------- */

typedef struct {
    float *q, *k, *v, *att, *xmid, *hpre, *lse, *xn1, *xn2, *rstd1, *rstd2;
} BlockActs;

/* The arena's tensors (xn1, xn2 point at x, xmid without a norm; rstd NULL). */
static BlockActs block_acts(float *acts, const float *x, int has_norm, size_t B, size_t T,
                            size_t C, size_t H, size_t NH) {
    const size_t N = B * T;
    BlockActs a;
    a.q = acts, a.k = a.q + N * C, a.v = a.k + N * C, a.att = a.v + N * C;
    a.xmid = a.att + N * C, a.hpre = a.xmid + N * C, a.lse = a.hpre + N * H;
    float *end = a.lse + B * NH * T;
    a.xn1 = has_norm ? end : (float *)x;
    a.xn2 = has_norm ? end + N * C : a.xmid;
    a.rstd1 = has_norm ? end + 2 * N * C : NULL;
    a.rstd2 = has_norm ? end + 2 * N * C + N : NULL;
    return a;
}

size_t block_acts_floats(int has_norm, size_t B, size_t T, size_t C, size_t H, size_t NH) {
    const size_t N = B * T;
    return N * (5 * C + H) + B * NH * T + (has_norm ? 2 * N * C + 2 * N : 0);
}

/* forward: hact [N,H] + attention's; backward: 5 x [N,C] + 2 x [N,H] + attention's */
size_t block_scratch_floats(size_t B, size_t T, size_t C, size_t H, size_t NH, int nthreads) {
    const size_t N = B * T;
    return N * (5 * C + 2 * H) + (size_t)nthreads * attention_scratch_floats(T, C, NH);
}

/* xout: OUT [B,T,C]; acts: OUT [block_acts_floats]; scratch: [block_scratch_floats];
 * x: IN [B,T,C]; w: IN (the gains both NULL or both set) */
int block_forward(float *xout, float *acts, float *scratch, const float *x, const BlockWeights *w,
                  int prec, size_t B, size_t T, size_t C, size_t H, size_t NH, int nthreads) {
    const size_t N = B * T;
    const BlockActs a = block_acts(acts, x, w->attn_norm != NULL, B, T, C, H, NH);
    float *hact = scratch, *attn_scratch = hact + N * H;
    int rc;
    norm_or_self(a.xn1, a.rstd1, x, w->attn_norm, N, C);
    if ((rc = block_qkv(a.q, a.k, a.v, a.xn1, w, NULL, prec, N, C))) return rc;
    if ((rc = attention_forward(a.att, a.lse, attn_scratch, a.q, a.k, a.v, prec, B, T, C, NH,
                                nthreads)))
        return rc;
    return block_out(xout, a.xmid, a.xn2, a.rstd2, a.hpre, hact, x, a.att, w, NULL, prec, N, C,
                     H);
}

/* dx += d norm(x) / dx applied to dxn (rmsnorm.c), or dx += dxn without a norm */
static void norm_backward(float *dx, float *dgain, const float *dxn, const float *x,
                          const float *gain, const float *rstd, size_t N, size_t C) {
    if (gain) {
        rmsnorm_backward(dx, dgain, dxn, x, gain, rstd, N, C);
        return;
    }
    for (size_t i = 0; i < N * C; i++) dx[i] += dxn[i];
}

/* dx: INOUT [B,T,C] (d xout in, d x out); g: INOUT (+=); scratch: [block_scratch_floats];
 * x: IN [B,T,C] (the forward's input); acts: IN (block_forward's); w: IN */
int block_backward(float *dx, const BlockGrads *g, float *scratch, const float *x,
                   const float *acts, const BlockWeights *w, int prec, size_t B, size_t T,
                   size_t C, size_t H, size_t NH, int nthreads) {
    const size_t N = B * T, NC = N * C * sizeof(float);
    const BlockActs a = block_acts((float *)acts, x, w->attn_norm != NULL, B, T, C, H, NH);
    float *dtmp = scratch, *datt = dtmp + N * C, *dq = datt + N * C, *dk = dq + N * C;
    float *dv = dk + N * C, *dh = dv + N * C, *hact = dh + N * H, *attn_scratch = hact + N * H;
    int rc;
    /* xout = xmid + MLP(norm2(xmid)) */
    memset(dtmp, 0, NC);
    if ((rc = mlp_backward(dtmp, g->w1, g->w2, dh, hact, dx, a.xn2, a.hpre, w->w1, w->w2, prec, N,
                           C, H, C)))
        return rc;
    norm_backward(dx, g->mlp_norm, dtmp, a.xmid, w->mlp_norm, a.rstd2, N, C);
    /* xmid = x + attention(norm1(x)) wo */
    memset(datt, 0, NC);
    if ((rc = linear_backward(datt, g->wo, dx, a.att, w->wo, prec, N, C, C))) return rc;
    memset(dq, 0, 3 * NC); /* dq, dk, dv */
    if ((rc = attention_backward(dq, dk, dv, attn_scratch, datt, a.q, a.k, a.v, a.att, a.lse, prec,
                                 B, T, C, NH, nthreads)))
        return rc;
    memset(dtmp, 0, NC);
    if ((rc = linear_backward(dtmp, g->wq, dq, a.xn1, w->wq, prec, N, C, C))) return rc;
    if ((rc = linear_backward(dtmp, g->wk, dk, a.xn1, w->wk, prec, N, C, C))) return rc;
    if ((rc = linear_backward(dtmp, g->wv, dv, a.xn1, w->wv, prec, N, C, C))) return rc;
    norm_backward(dx, g->attn_norm, dtmp, x, w->attn_norm, a.rstd1, N, C);
    return SC_OK;
}

/* ---- completion: the known positions at once, into the key/value cache ------------- */

/* The training pass's block (float32) over positions 0..T-1 of B sequences, its keys and
 * values then stored in the cache for block_decode to go on from position T (the
 * prefill of a completion: the given pixels in one pass instead of T decode steps).
 * xout: OUT [B,T,C]; kcache, vcache: INOUT (decode.c's layouts, Tmax positions),
 * positions 0..T-1 written; acts: [block_acts_floats] and scratch: [block_scratch_floats],
 * both only scratch here; x: IN [B,T,C]; w: IN. T <= Tmax. */
int block_prefill(float *xout, void *kcache, void *vcache, int kv_type, float *acts,
                  float *scratch, const float *x, const BlockWeights *w, size_t B, size_t T,
                  size_t Tmax, size_t C, size_t H, size_t NH, int nthreads) {
    if (kv_type != SC_KV_F32 && kv_type != SC_KV_F16) return SC_ERR_BAD_ARG;
    if (Tmax % SC_KV_BLOCK) return SC_ERR_CACHE_LEN;
    if (T > Tmax) return SC_ERR_POSITION;
    int rc = block_forward(xout, acts, scratch, x, w, SC_PREC_F32, B, T, C, H, NH, nthreads);
    if (rc) return rc;
    const BlockActs a = block_acts(acts, x, w->attn_norm != NULL, B, T, C, H, NH);
    return kv_cache_fill(kcache, vcache, kv_type, a.k, a.v, T, B, Tmax, C, NH);
}

/* ---- sampling: one position, with the key/value cache ----------------------------- */

size_t block_decode_scratch_floats(size_t B, size_t C, size_t H, size_t Tmax, int nthreads) {
    /* per thread: h, q, k, v, att [rows,C], rstd [rows], hpre, hact [rows,H], scores */
    const size_t rows = (B + (size_t)nthreads - 1) / (size_t)nthreads;
    return (size_t)nthreads * (rows * (5 * C + 1 + 2 * H) + attention_decode_scratch_floats(Tmax));
}

/* One thread's rows [b0,b1) through the block; sc: this thread's scratch. */
static int block_rows(float *x, void *kcache, void *vcache, int kv_type, float *sc,
                      const BlockWeights *w, const BlockPacked *p, size_t pos, size_t b0,
                      size_t b1, size_t Tmax, size_t C, size_t H, size_t NH) {
    const size_t R = b1 - b0;
    if (R == 0) return SC_OK;
    float *h = sc, *q = h + R * C, *k = q + R * C, *v = k + R * C, *att = v + R * C;
    float *rstd = att + R * C, *hpre = rstd + R, *hact = hpre + R * H, *s = hact + R * H;
    float *xr = x + b0 * C;
    /* this slice's caches: each sequence's are NH * Tmax * d elements */
    const size_t elem = kv_type == SC_KV_F16 ? 2 : 4, skip = b0 * Tmax * C * elem;
    void *kc = (char *)kcache + skip, *vc = (char *)vcache + skip;
    int rc;
    /* the projections and the MLP run on this thread, beside the other threads' rows:
     * float32, the training pass's kernels (with a few rows linear.c's SMALL_N path);
     * bfloat16 on weights packed once by the caller (p; packing them at every pixel
     * would cost more than the products). The attention over the cache stays at the
     * cache's precision. */
    const float *hn = norm_or_self(h, rstd, xr, w->attn_norm, R, C);
    if ((rc = block_qkv(q, k, v, hn, w, p, SC_PREC_F32, R, C))) return rc;
    if ((rc = kv_cache_write(kc, vc, kv_type, k, v, pos, R, Tmax, C, NH))) return rc;
    if ((rc = attention_decode(att, s, q, kc, vc, kv_type, pos, R, Tmax, C, NH, 1))) return rc;
    return block_out(xr, xr, h, rstd, hpre, hact, xr, att, w, p, SC_PREC_F32, R, C, H);
}

typedef struct {
    float *x, *scratch;
    void *kcache, *vcache;
    int kv_type;
    const BlockWeights *w;
    const BlockPacked *p;
    size_t pos, B, Tmax, C, H, NH, per;
    int err; /* the last failing thread's code (written atomically) */
} DecodeRows;

static void block_decode_share(void *ctx, size_t t, size_t nt) {
    DecodeRows *a = ctx;
    size_t b0, b1;
    float *sc = thread_share(a->scratch, a->per, a->B, t, nt, &b0, &b1);
    const int rc = block_rows(a->x, a->kcache, a->vcache, a->kv_type, sc, a->w, a->p, a->pos, b0,
                              b1, a->Tmax, a->C, a->H, a->NH);
    if (rc) __atomic_store_n(&a->err, rc, __ATOMIC_RELAXED);
}

/* x: INOUT [B,C]; kcache, vcache: INOUT (decode.c's layouts), positions 0..pos-1 filled,
 * pos written here; scratch: [block_decode_scratch_floats(B, C, H, Tmax, nthreads)];
 * w: this layer's weights (the gains both NULL when the model has no norm); packed: its
 * products' weights packed by sc_bf16_pack (bfloat16 products), or NULL (float32). */
int block_decode(float *x, void *kcache, void *vcache, int kv_type, float *scratch,
                 const BlockWeights *w, const BlockPacked *packed, size_t pos, size_t B,
                 size_t Tmax, size_t C, size_t H, size_t NH, int nthreads) {
    if (nthreads < 1) return SC_ERR_THREADS;
    if (packed && !sc_bf16_supported()) return SC_ERR_UNSUPPORTED;
    if (kv_type != SC_KV_F32 && kv_type != SC_KV_F16) return SC_ERR_BAD_ARG;
    if (Tmax % SC_KV_BLOCK) return SC_ERR_CACHE_LEN;
    if (pos >= Tmax) return SC_ERR_POSITION;
    const size_t per = block_decode_scratch_floats(B, C, H, Tmax, nthreads) / (size_t)nthreads;
    DecodeRows a = {x, scratch, kcache, vcache, kv_type, w, packed, pos, B, Tmax, C, H, NH, per,
                    SC_OK};
    sc_parallel(threads_for(B, nthreads), block_decode_share, &a);
    return a.err;
}
