/* bf16.c: bfloat16 products for mixed-precision training, on AVX512_BF16.
 *
 *   bf16(x)  = x rounded to the nearest bfloat16, ties to even (the top 16 bits of
 *              the float32 after rounding); NaN stays NaN (quiet, sign kept); the
 *              float32 subnormals round like any other number (no flush to zero)
 *   C[M,N]   = alpha * bf16(op(A))[M,K] @ bf16(op(B))[K,N] + beta * C
 *              every product of two bf16 numbers exact, the sums in float32
 *
 * The product runs on VDPBF16PS, which multiplies pairs of bf16 numbers (k and k+1)
 * and adds both products into one float32 lane: twice the multiply-adds of an FMA per
 * instruction. Its operands are packed in K-pairs: a 32-bit word holds bf16(x[k]) in
 * its low half and bf16(x[k+1]) in its high half (a zero pads an odd K).
 *   B is packed per block of KC rows into column panels of NR = 32 (two registers):
 *     Bp[kp][j], the pair of rows 2kp, 2kp+1 at column j;
 *   A, per thread, into panels of MR = 8 rows: Ap[r][kp] (or Ap[kp][r] when op(A) is
 *     a transpose, whichever its memory order makes contiguous).
 * The register tile is MR x NR: 16 accumulators, two loads of B and a broadcast of A
 * per pair (8 x 32 measured fastest of 8, 12, 14 rows on a Zen 5 with packed operands:
 * 455 GFLOP/s on one core). The threads (parallel.h) first pack B's pairs together,
 * then take the rows of C in panels of 8, each packing its own A.
 *
 * Rounding is done in integer arithmetic, not with VCVTNEPS2BF16, which flushes
 * subnormal inputs to zero: the packed numbers are exactly the reference's.
 * The packed B (KC/2 x roundup(N,32) words) is allocated here, like blas.c's split-K
 * buffer: SC_ERR_NO_MEMORY when it cannot be.
 *
 * Built once, with AVX512_BF16's flags (setup.py), not per level: there is one level
 * that has the instruction. sc_bf16_supported says whether this CPU has it; the
 * entry points return SC_ERR_UNSUPPORTED elsewhere, and on other architectures.
 */
#include "simcore.h"
#include "parallel.h"
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512VL__)
#define SC_HAVE_BF16 1
#include <immintrin.h>
#endif

/* bf16 bits of one float32, rounded to nearest even (the reference bf16_round) */
static inline uint16_t round_one(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x0040u); /* NaN: quiet */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* This CPU has AVX512_BF16 and the vector level in use is AVX-512 (a level capped
 * below it, SIMCORE_ISA=avx2, stands for a CPU without AVX-512, so without bf16 too). */
int sc_bf16_supported(void) {
#if defined(SC_HAVE_BF16) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16") &&
           sc_isa_get() >= SC_ISA_AVX512;
#else
    return 0;
#endif
}

/* out: OUT [n] bf16 bits; x: IN [n] */
void bf16_round(uint16_t *out, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = round_one(x[i]);
}

#ifdef SC_HAVE_BF16
#define MR 8
#define NR 32
#define KC 512 /* rows of B per packed block (256 pairs) */

/* 16 floats -> 16 words, each float's bf16 bits in the top half (low half zero) */
static inline __m512i round16(__m512 v) {
    const __m512i x = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), odd);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, x, _mm512_set1_epi32(0x00400000)); /* NaN: x, quiet */
    return _mm512_and_si512(r, _mm512_set1_epi32((int)0xffff0000u));
}

/* The pairs (lo[i], hi[i]) of two rows, 16 at a time: bf16(lo) low, bf16(hi) high. */
static inline __m512i pair16(__m512 lo, __m512 hi) {
    return _mm512_or_si512(round16(hi), _mm512_srli_epi32(round16(lo), 16));
}

static inline uint32_t pair1(float lo, float hi) {
    return (uint32_t)round_one(lo) | ((uint32_t)round_one(hi) << 16);
}

/* op(X)[i][k] for a row-major X: X[i*ld + k], or X[k*ld + i] when transposed */
static inline float at(const float *X, size_t ld, int trans, size_t i, size_t k) {
    return trans ? X[k * ld + i] : X[i * ld + k];
}

/* Bp [kc/2 rounded up][N rounded up to NR]: rows k0..k0+kc of op(B), in pairs; the
 * pairs kp0..kp1 of them (threads pack a share each). */
static void pack_b(uint32_t *Bp, const float *B, size_t ldb, int transB, size_t k0, size_t kc,
                   size_t N, size_t kp0, size_t kp1) {
    const size_t NP = (N + NR - 1) / NR * NR;
    for (size_t kp = kp0; kp < kp1; kp++) {
        const size_t k = k0 + 2 * kp;
        const int two = 2 * kp + 1 < kc;
        uint32_t *row = Bp + kp * NP;
        size_t j = 0;
        if (!transB) { /* rows k and k+1 are contiguous: 16 columns at a time */
            const float *b0 = B + k * ldb, *b1 = two ? b0 + ldb : NULL;
            for (; j + 16 <= N; j += 16) {
                const __m512 lo = _mm512_loadu_ps(b0 + j);
                const __m512 hi = two ? _mm512_loadu_ps(b1 + j) : _mm512_setzero_ps();
                _mm512_storeu_si512(row + j, pair16(lo, hi));
            }
        }
        for (; j < N; j++) row[j] = pair1(at(B, ldb, !transB, j, k), two ? at(B, ldb, !transB, j, k + 1) : 0.0f);
        for (; j < NP; j++) row[j] = 0;
    }
}

/* Ap: the MR rows i0.. of op(A) (fewer at the edge: zeros), columns k0..k0+kc, in
 * pairs; returns the strides of a row and of a pair in words. */
static void pack_a(uint32_t *Ap, size_t *sr, size_t *sk, const float *A, size_t lda, int transA,
                   size_t i0, size_t rows, size_t k0, size_t kc) {
    const size_t KP = (kc + 1) / 2;
    if (!transA) { /* a row's pairs are contiguous: Ap[r][kp] */
        *sr = KP, *sk = 1;
        for (size_t r = 0; r < MR; r++) {
            uint32_t *out = Ap + r * KP;
            if (r >= rows) {
                memset(out, 0, KP * sizeof(uint32_t));
                continue;
            }
            const float *a = A + (i0 + r) * lda + k0;
            size_t kp = 0;
            for (; 2 * kp + 32 <= kc; kp += 16) {
                /* 32 floats: even ones low, odd ones high, as 16 pairs */
                const __m512i lo = _mm512_castps_si512(_mm512_loadu_ps(a + 2 * kp));
                const __m512i hi = _mm512_castps_si512(_mm512_loadu_ps(a + 2 * kp + 16));
                const __m512i ev = _mm512_permutex2var_epi32(lo, _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0), hi);
                const __m512i od = _mm512_permutex2var_epi32(lo, _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1), hi);
                _mm512_storeu_si512(out + kp, pair16(_mm512_castsi512_ps(ev), _mm512_castsi512_ps(od)));
            }
            for (; kp < KP; kp++) out[kp] = pair1(a[2 * kp], 2 * kp + 1 < kc ? a[2 * kp + 1] : 0.0f);
        }
    } else { /* A is stored [K][M]: rows k, k+1 of A hold the pairs of MR columns: Ap[kp][r] */
        *sr = 1, *sk = MR;
        const __mmask16 m = (__mmask16)((1u << rows) - 1); /* rows <= MR = 8 */
        for (size_t kp = 0; kp < KP; kp++) {
            const float *a0 = A + (k0 + 2 * kp) * lda + i0;
            const __m512 lo = _mm512_maskz_loadu_ps(m, a0);
            const __m512 hi = 2 * kp + 1 < kc ? _mm512_maskz_loadu_ps(m, a0 + lda) : _mm512_setzero_ps();
            _mm512_mask_storeu_epi32(Ap + kp * MR, 0xff, pair16(lo, hi));
        }
    }
}

/* C[MR x NR] (+)= alpha * Ap . Bp over KP pairs; only rows < rows, columns < cols are
 * stored; first: C = beta * C + ..., else C += ... */
static void micro(float *C, size_t ldc, const uint32_t *Ap, size_t sr, size_t sk,
                  const uint32_t *Bp, size_t NP, size_t KP, size_t rows, size_t cols, float alpha,
                  float beta, int first) {
    __m512 acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (size_t kp = 0; kp < KP; kp++) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(Bp + kp * NP);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(Bp + kp * NP + 16);
        for (int r = 0; r < MR; r++) {
            const __m512bh a = (__m512bh)_mm512_set1_epi32((int)Ap[r * sr + kp * sk]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
        }
    }
    const __mmask16 m0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    const __mmask16 m1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (size_t r = 0; r < rows; r++) {
        float *c = C + r * ldc;
        for (int h = 0; h < 2; h++) {
            const __mmask16 m = h ? m1 : m0;
            if (!m) continue;
            __m512 v = _mm512_mul_ps(acc[r][h], va);
            if (!first || beta != 0.0f) {
                const __m512 old = _mm512_maskz_loadu_ps(m, c + 16 * h);
                v = first ? _mm512_fmadd_ps(old, vb, v) : _mm512_add_ps(old, v);
            }
            _mm512_mask_storeu_ps(c + 16 * h, m, v);
        }
    }
}
#endif

#ifdef SC_HAVE_BF16
/* One product's arguments, for the team (parallel.h). */
typedef struct {
    int transA, transB;
    size_t M, N;
    float alpha;
    const float *A;
    size_t lda;
    const float *B;
    size_t ldb;
    float beta;
    float *C;
    size_t ldc;
    uint32_t *Bp;
    size_t k0, kc, panels;
} Product;

/* The pairs [lo,hi) of the current block of B. */
static void pack_b_pairs(void *ctx, size_t lo, size_t hi) {
    const Product *a = ctx;
    pack_b(a->Bp, a->B, a->ldb, a->transB, a->k0, a->kc, a->N, lo, hi);
}

/* Row panels [lo,hi) of C: each packs its A, then runs across all of C's columns. */
static void row_panels(void *ctx, size_t lo, size_t hi) {
    const Product *a = ctx;
    uint32_t Ap[MR * (KC / 2)];
    const size_t KP = (a->kc + 1) / 2, NP = (a->N + NR - 1) / NR * NR;
    for (size_t p = lo; p < hi; p++) {
        const size_t i0 = p * MR, rows = a->M - i0 < MR ? a->M - i0 : MR;
        size_t sr, sk;
        pack_a(Ap, &sr, &sk, a->A, a->lda, a->transA, i0, rows, a->k0, a->kc);
        for (size_t j0 = 0; j0 < a->N; j0 += NR)
            micro(a->C + i0 * a->ldc + j0, a->ldc, Ap, sr, sk, a->Bp + j0, NP, KP, rows,
                  a->N - j0 < NR ? a->N - j0 : NR, a->alpha, a->beta, a->k0 == 0);
    }
}
#endif

/* Row-major C[M,N] = alpha * bf16(op(A)) @ bf16(op(B)) + beta * C, float32 sums.
 * A: IN op(A) [M,K] (stored [K,M] when transA); B: IN op(B) [K,N] (stored [N,K] when
 * transB); C: INOUT [M,N] (not read when beta is 0). Threads: sc_get_num_threads(). */
int sc_bgemm(int transA, int transB, size_t M, size_t N, size_t K, float alpha, const float *A,
             size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc) {
#ifdef SC_HAVE_BF16
    if (!sc_bf16_supported()) return SC_ERR_UNSUPPORTED;
    if (M == 0 || N == 0) return SC_OK;
    const size_t NP = (N + NR - 1) / NR * NR, kcmax = K < KC ? (K ? K : 1) : KC;
    uint32_t *Bp = malloc(((kcmax + 1) / 2) * NP * sizeof(uint32_t));
    if (!Bp) return SC_ERR_NO_MEMORY;
    const size_t panels = (M + MR - 1) / MR;
    int nt = sc_get_num_threads();
    if ((size_t)nt > panels) nt = (int)panels;
    if (K == 0) { /* no products: C = beta * C */
        for (size_t i = 0; i < M; i++)
            for (size_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        free(Bp);
        return SC_OK;
    }
    for (size_t k0 = 0; k0 < K; k0 += KC) {
        const size_t kc = K - k0 < KC ? K - k0 : KC;
        const int big = (double)M * N * kc > 1e6;
        Product a = {transA, transB, M, N, alpha, A, lda, B, ldb, beta, C, ldc, Bp, k0, kc, panels};
        sc_parallel_for((kc + 1) / 2, big ? nt : 1, pack_b_pairs, &a); /* every thread packs B */
        sc_parallel_for(panels, big ? nt : 1, row_panels, &a);        /* then its rows of C */
    }
    free(Bp);
    return SC_OK;
#else
    (void)transA, (void)transB, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda;
    (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
    return SC_ERR_UNSUPPORTED;
#endif
}
