/* decode.c: sampling's forward pass, one new position of every sequence at a time,
 * with a key/value cache (the training pass is in the per-layer files).
 *
 * Caches, per layer, for Tmax positions (a multiple of KB = SC_KV_BLOCK = 16), d = C/NH:
 *   kcache [B, NH, Tmax/KB, d, KB]  keys in blocks of 16 positions, each block
 *                                   transposed: the scores of 16 positions are
 *                                   d FMAs of 16 floats (16/VW vectors) over one
 *                                   contiguous 16d-float run
 *   vcache [B, NH, Tmax, d]         values as rows: the weighted sum is a
 *                                   stream of axpys over contiguous rows
 * Every (b,h) owns one contiguous stretch of each cache, so a step streams
 * through memory. At batch 100 the `small` caches reach 320 MB in float32:
 * sampling is bound by how fast the caches stream, and the loops below are
 * written so that each cache line is loaded once per step and used whole.
 *
 * Element type (kv_type): SC_KV_F32, or SC_KV_F16, IEEE half precision (the
 * bits, uint16_t), which halves the bytes streamed per step. Keys and values are
 * rounded to nearest-even on the way in (relative error <= 2^-11) and widened to
 * float32 on the way out; all arithmetic stays float32. A key or value that
 * half precision cannot hold (|x| >= 65520, or not finite) is refused
 * (SC_ERR_RANGE), never stored as infinity. One body serves both types: the
 * functions taking `const int half` are always inlined into a copy per type.
 *
 * attention_decode: out[b] = softmax(q[b] . K[0..pos,b] / sqrt(d)) V[0..pos,b]
 * kv_cache_write stores one position of every sequence; kv_cache_fill stores positions
 * 0..T-1 at once from the training pass's keys and values (completion's prefill).
 * (The whole block at one position, block_decode, is in block.c with the training
 * pass's block.)
 */
#include "simcore.h"
#include "vec.h"
#include "parallel.h"
#include <math.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#define KB SC_KV_BLOCK /* positions per key block: a multiple of VW at every level */

/* Cache of sequence b, head h: where its keys / values start (in elements). */
INLINE size_t kv_offset(size_t b, size_t h, size_t NH, size_t Tmax, size_t d) {
    return (b * NH + h) * Tmax * d;
}

/* ---- half precision ---------------------------------------------------------- */

/* float -> half bits, round to nearest even. Returns 0x7c00 | sign (infinity) for
 * |f| >= 65520 and for inf/NaN: the callers check fits_half first. */
INLINE uint16_t to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7fffffffu;
    if (x >= 0x477ff000u) return sign | 0x7c00; /* 65520 and up round to infinity */
    if (x < 0x38800000u) {                      /* below 2^-14: a subnormal half or 0 */
        float a;                                /* a * 2^24 + 2^23: the integer */
        memcpy(&a, &x, 4);                      /* round(a * 2^24) in the low bits */
        float t = a * 0x1p24f + 0x1p23f;        /* (<= 1024 here: 1024 is 2^-14) */
        uint32_t bits;
        memcpy(&bits, &t, 4);
        return sign | (uint16_t)(bits - 0x4b000000u);
    }
    /* rebias the exponent (127 -> 15) and round the mantissa's 13 low bits away */
    return sign | (uint16_t)((x - 0x38000000u + 0xfffu + ((x >> 13) & 1u)) >> 13);
}

/* |f| < 65520 and finite (NaN fails too): half precision holds f. */
INLINE int fits_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    return (x & 0x7fffffffu) < 0x477ff000u;
}

/* half bits -> float: the hardware's conversion where the level has one (F16C at
 * AVX2 and AVX-512, FCVTL on AArch64); else (h & 0x7fff) << 13 puts the exponent
 * and mantissa in place with the exponent biased for 15, multiplying by 2^112
 * rebiases it to 127 (subnormal halves included: they become float32 denormals
 * times 2^112); the sign is or-ed back. Finite halves only (the cache holds no
 * others). Either way exact: every half is a float. */
typedef uint16_t vh_mem __attribute__((vector_size(VW * 2), aligned(2), may_alias));
INLINE vf vload_half(const uint16_t *p) {
#if defined(__AVX512F__)
    return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif defined(__F16C__) && VW == 8
    return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#elif defined(__aarch64__) && VW == 4
    return (vf)vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
#else
    const vi x = __builtin_convertvector(*(const vh_mem *)p, vi);
    const vf mag = (vf)((x & 0x7fff) << 13) * 0x1p112f;
    return (vf)((vi)mag | ((x & 0x8000) << 16));
#endif
}

INLINE float from_half(uint16_t h) {
    const uint32_t x = ((uint32_t)(h & 0x7fff) << 13);
    float f;
    memcpy(&f, &x, 4);
    f *= 0x1p112f;
    return (h & 0x8000) ? -f : f;
}

/* A vector of the cache at element i, and one element, as float32. */
INLINE vf kv_vload(const void *p, size_t i, const int half) {
    return half ? vload_half((const uint16_t *)p + i) : vload((const float *)p + i);
}
INLINE float kv_load(const void *p, size_t i, const int half) {
    return half ? from_half(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
INLINE const void *kv_at(const void *p, size_t i, const int half) {
    return half ? (const void *)((const uint16_t *)p + i) : (const void *)((const float *)p + i);
}

/* One (sequence, head)'s key and value rows kr, vr [d] stored as position pos of its
 * caches (kc, vc: that pair's stretch); the callers checked that a half cache holds them. */
INLINE void kv_store(void *kc, void *vc, const float *kr, const float *vr, size_t pos, size_t d,
                     const int half) {
    const size_t kpos = (pos / KB) * d * KB + pos % KB;
    if (half) {
        uint16_t *kb = (uint16_t *)kc + kpos, *vb = (uint16_t *)vc + pos * d;
        for (size_t e = 0; e < d; e++) kb[e * KB] = to_half(kr[e]);
        for (size_t e = 0; e < d; e++) vb[e] = to_half(vr[e]);
    } else {
        float *kb = (float *)kc + kpos;
        for (size_t e = 0; e < d; e++) kb[e * KB] = kr[e];
        memcpy((float *)vc + pos * d, vr, d * sizeof(float));
    }
}

/* Whether half precision holds all n values of k and of v. */
static int all_fit_half(const float *k, const float *v, size_t n) {
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= fits_half(k[i]) & fits_half(v[i]);
    return ok;
}

/* kcache, vcache: INOUT (layouts above, elements of kv_type); k, v: IN [B,C].
 * Stores position pos; SC_ERR_RANGE (nothing stored) if a half cache cannot hold a
 * value. */
int kv_cache_write(void *kcache, void *vcache, int kv_type, const float *k, const float *v,
                   size_t pos, size_t B, size_t Tmax, size_t C, size_t NH) {
    const size_t d = C / NH;
    const int half = kv_type == SC_KV_F16;
    const size_t elem = half ? 2 : 4;
    if (kv_type != SC_KV_F32 && kv_type != SC_KV_F16) return SC_ERR_BAD_ARG;
    if (half && !all_fit_half(k, v, B * C)) return SC_ERR_RANGE;
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < NH; h++) {
            const size_t off = kv_offset(b, h, NH, Tmax, d) * elem;
            kv_store((char *)kcache + off, (char *)vcache + off, k + b * C + h * d, v + b * C + h * d,
                     pos, d, half);
        }
    return SC_OK;
}

typedef struct {
    void *kcache, *vcache;
    const float *k, *v;
    size_t T, Tmax, C, NH;
    int half;
} FillRows;

/* sequences [lo,hi) of kv_cache_fill */
static void fill_rows(void *ctx, size_t lo, size_t hi) {
    const FillRows *a = ctx;
    const size_t d = a->C / a->NH, elem = a->half ? 2 : 4;
    for (size_t b = lo; b < hi; b++)
        for (size_t h = 0; h < a->NH; h++) {
            const size_t off = kv_offset(b, h, a->NH, a->Tmax, d) * elem;
            void *kc = (char *)a->kcache + off, *vc = (char *)a->vcache + off;
            for (size_t t = 0; t < a->T; t++) {
                const size_t row = (b * a->T + t) * a->C + h * d;
                kv_store(kc, vc, a->k + row, a->v + row, t, d, a->half);
            }
        }
}

/* kcache, vcache: INOUT (layouts above, elements of kv_type); k, v: IN [B,T,C], the keys
 * and values of positions 0..T-1 of every sequence (the training pass's layout), all
 * stored at once: the prefill of a known prefix. T <= Tmax; SC_ERR_RANGE (nothing
 * stored) if a half cache cannot hold a value. The same elements as T calls of
 * kv_cache_write. */
int kv_cache_fill(void *kcache, void *vcache, int kv_type, const float *k, const float *v,
                  size_t T, size_t B, size_t Tmax, size_t C, size_t NH) {
    if (kv_type != SC_KV_F32 && kv_type != SC_KV_F16) return SC_ERR_BAD_ARG;
    if (Tmax % KB) return SC_ERR_CACHE_LEN;
    if (T > Tmax) return SC_ERR_POSITION;
    const int half = kv_type == SC_KV_F16;
    if (half && !all_fit_half(k, v, B * T * C)) return SC_ERR_RANGE;
    FillRows a = {kcache, vcache, k, v, T, Tmax, C, NH, half};
    sc_parallel_for(B, threads_if(B * T * C > 65536), fill_rows, &a);
    return SC_OK;
}

/* s0[0..KB) = scale * q . keys of block b0, and s1 likewise for b1: each q[e]
 * feeds both blocks (1.3x over one block at a time, measured at B=1). A block
 * row is VPB vectors; NP partial sums over e per block hide the FMA latency.
 * Either way 2 * NP * VPB = 8 accumulators, at every vector level. (NEON's 32
 * registers would seem to hold 16, NP 2, but GCC 12 loads all 16 key vectors of
 * a round first and then spills two accumulators in the loop: checked in the
 * disassembly; 8 spill nothing.) */
#define VPB (KB / VW) /* vectors per key block row */
#define NP (VW / 4)
INLINE void scores_pair(float *s0, float *s1, const void *b0, const void *b1,
                        const float *q, size_t d, float scale, const int half) {
    vf a[NP][VPB], c[NP][VPB];
    UNROLL for (int u = 0; u < NP; u++)
        UNROLL for (int k = 0; k < VPB; k++) a[u][k] = c[u][k] = (vf){0};
    size_t e = 0;
    for (; e + NP <= d; e += NP)
        UNROLL for (int u = 0; u < NP; u++)
            UNROLL for (int k = 0; k < VPB; k++) {
                a[u][k] += q[e + u] * kv_vload(b0, (e + u) * KB + k * VW, half);
                c[u][k] += q[e + u] * kv_vload(b1, (e + u) * KB + k * VW, half);
            }
    for (; e < d; e++)
        UNROLL for (int k = 0; k < VPB; k++) {
            a[0][k] += q[e] * kv_vload(b0, e * KB + k * VW, half);
            c[0][k] += q[e] * kv_vload(b1, e * KB + k * VW, half);
        }
    UNROLL for (int k = 0; k < VPB; k++) {
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
INLINE void decode_head(float *restrict out, float *restrict s, const float *restrict q,
                        const void *restrict Kb, const void *restrict V, size_t pos,
                        size_t d, const int half) {
    const float scale = 1.0f / sqrtf((float)d);
    const size_t n = pos + 1, nb = (n + KB - 1) / KB;
    /* scores, two blocks of 16 at a time (an odd last block is paired with itself) */
    for (size_t jb = 0; jb < nb; jb += 2) {
        const size_t jc = jb + 1 < nb ? jb + 1 : jb;
        scores_pair(s + jb * KB, s + jc * KB, kv_at(Kb, jb * d * KB, half),
                    kv_at(Kb, jc * d * KB, half), q, d, scale, half);
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
                const size_t r = (j + u) * d + e0;
                a[2 * u] += s[j + u] * kv_vload(V, r, half);
                a[2 * u + 1] += s[j + u] * kv_vload(V, r + VW, half);
            }
        for (; j < n; j++) {
            a[0] += s[j] * kv_vload(V, j * d + e0, half);
            a[1] += s[j] * kv_vload(V, j * d + e0 + VW, half);
        }
        vstore(out + e0, ((a[0] + a[2]) + (a[4] + a[6])) * inv);
        vstore(out + e0 + VW, ((a[1] + a[3]) + (a[5] + a[7])) * inv);
    }
    for (; e0 + VW <= d; e0 += VW) {
        vf a[4];
        UNROLL for (int u = 0; u < 4; u++) a[u] = (vf){0};
        size_t j = 0;
        for (; j + 4 <= n; j += 4)
            UNROLL for (int u = 0; u < 4; u++) a[u] += s[j + u] * kv_vload(V, (j + u) * d + e0, half);
        for (; j < n; j++) a[0] += s[j] * kv_vload(V, j * d + e0, half);
        vstore(out + e0, ((a[0] + a[1]) + (a[2] + a[3])) * inv);
    }
    for (; e0 < d; e0++) { /* d % VW leftover columns */
        float acc = 0.0f;
        for (size_t j = 0; j < n; j++) acc += s[j] * kv_load(V, j * d + e0, half);
        out[e0] = acc * inv;
    }
}

/* decode_head for each cache type (the branches on `half` folded away) */
static void decode_head_f32(float *out, float *s, const float *q, const void *Kb,
                            const void *V, size_t pos, size_t d) {
    decode_head(out, s, q, Kb, V, pos, d, 0);
}
static void decode_head_f16(float *out, float *s, const float *q, const void *Kb,
                            const void *V, size_t pos, size_t d) {
    decode_head(out, s, q, Kb, V, pos, d, 1);
}

/* Rows b0..b1 of attention_decode, on the calling thread. */
static void decode_rows(float *out, float *s, const float *q, const void *kcache,
                        const void *vcache, int kv_type, size_t pos, size_t b0, size_t b1,
                        size_t Tmax, size_t C, size_t NH) {
    const size_t d = C / NH;
    const int half = kv_type == SC_KV_F16;
    for (size_t b = b0; b < b1; b++)
        for (size_t h = 0; h < NH; h++) {
            const size_t off = kv_offset(b, h, NH, Tmax, d);
            (half ? decode_head_f16 : decode_head_f32)(out + b * C + h * d, s, q + b * C + h * d,
                                                       kv_at(kcache, off, half),
                                                       kv_at(vcache, off, half), pos, d);
        }
}

/* the checks every decode entry point makes */
INLINE int decode_args_ok(int nthreads, int kv_type, size_t pos, size_t Tmax) {
    if (nthreads < 1) return SC_ERR_THREADS;
    if (kv_type != SC_KV_F32 && kv_type != SC_KV_F16) return SC_ERR_BAD_ARG;
    if (Tmax % KB) return SC_ERR_CACHE_LEN;
    if (pos >= Tmax) return SC_ERR_POSITION;
    return SC_OK;
}

size_t attention_decode_scratch_floats(size_t Tmax) { return (Tmax + KB - 1) / KB * KB; }

typedef struct {
    float *out, *scratch;
    const float *q;
    const void *kcache, *vcache;
    int kv_type;
    size_t pos, B, Tmax, C, NH;
} DecodeRows;

static void decode_share(void *ctx, size_t t, size_t nt) {
    const DecodeRows *a = ctx;
    size_t b0, b1;
    float *s = thread_share(a->scratch, attention_decode_scratch_floats(a->Tmax), a->B, t, nt,
                            &b0, &b1);
    decode_rows(a->out, s, a->q, a->kcache, a->vcache, a->kv_type, a->pos, b0, b1, a->Tmax, a->C,
                a->NH);
}

/* out: OUT [B,C]; scratch: [nthreads * attention_decode_scratch_floats(Tmax)];
 * q: IN [B,C]; kcache, vcache: IN (elements of kv_type), positions 0..pos filled;
 * pos < Tmax, Tmax % 16 == 0 */
int attention_decode(float *out, float *scratch, const float *q, const void *kcache,
                     const void *vcache, int kv_type, size_t pos, size_t B, size_t Tmax,
                     size_t C, size_t NH, int nthreads) {
    const int rc = decode_args_ok(nthreads, kv_type, pos, Tmax);
    if (rc) return rc;
    DecodeRows a = {out, scratch, q, kcache, vcache, kv_type, pos, B, Tmax, C, NH};
    sc_parallel(B * NH * pos > 4096 ? threads_for(B, nthreads) : 1, decode_share, &a);
    return SC_OK;
}
