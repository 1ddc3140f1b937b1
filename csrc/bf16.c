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
 *   A, per thread, into panels of MR = 8 rows: Ap[r][kp]; or, when op(A) is a
 *     transpose (stored [K][M]), whole per block with B: At[kp][i] for every row i.
 * The register tile is MR x NR: 16 accumulators, two loads of B and a broadcast of A
 * per pair (8 x 32 measured fastest of 8, 12, 14 rows on a Zen 5 with packed operands:
 * 455 GFLOP/s on one core). The threads (parallel.h) first pack B's pairs together,
 * then take the rows of C in panels of 8, each packing its own A.
 *
 * Rounding is done in integer arithmetic, not with VCVTNEPS2BF16, which flushes
 * subnormal inputs to zero: the packed numbers are exactly the reference's.
 * The packed B (KC/2 x roundup(N,32) words, and the packed A when it is a transpose)
 * and split-K's partial sums are allocated here, like blas.c's split-K buffer:
 * SC_ERR_NO_MEMORY when they cannot be.
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

static inline __mmask16 first_n(size_t n) { /* the lanes below n, of 16 */
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

/* Pairs of rows: dst[p*ldd + c] = (bf16(X[2p][c]), bf16(X[2p+1][c])) for p < rows/2
 * rounded up and c < cols; an odd last row pairs with zero. */
void sc_bf16_pack_row_pairs(uint32_t *dst, size_t ldd, const float *X, size_t ldx, size_t rows,
                            size_t cols) {
    for (size_t p = 0; 2 * p < rows; p++) {
        const float *x0 = X + 2 * p * ldx, *x1 = x0 + ldx;
        const int two = 2 * p + 1 < rows;
        for (size_t c = 0; c < cols; c += 16) {
            const __mmask16 m = first_n(cols - c);
            const __m512 lo = _mm512_maskz_loadu_ps(m, x0 + c);
            const __m512 hi = two ? _mm512_maskz_loadu_ps(m, x1 + c) : _mm512_setzero_ps();
            _mm512_mask_storeu_epi32(dst + p * ldd + c, m, pair16(lo, hi));
        }
    }
}

/* Pairs within rows (a row's bf16 numbers in order): dst[r*ldd + p] = (bf16(X[r][2p]),
 * bf16(X[r][2p+1])) for r < rows, p < cols/2 rounded up; an odd last column pairs
 * with zero. */
void sc_bf16_pack_pairs_in_rows(uint32_t *dst, size_t ldd, const float *X, size_t ldx,
                                size_t rows, size_t cols) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (size_t r = 0; r < rows; r++) {
        const float *x = X + r * ldx;
        for (size_t c = 0; c < cols; c += 32) { /* 32 floats: 16 pairs */
            const size_t n = cols - c;
            const __m512i lo = _mm512_castps_si512(_mm512_maskz_loadu_ps(first_n(n), x + c));
            const __m512i hi = _mm512_castps_si512(
                _mm512_maskz_loadu_ps(n > 16 ? first_n(n - 16) : 0, x + c + 16));
            const __m512 ev = _mm512_castsi512_ps(_mm512_permutex2var_epi32(lo, even, hi));
            const __m512 od = _mm512_castsi512_ps(_mm512_permutex2var_epi32(lo, odd, hi));
            _mm512_mask_storeu_epi32(dst + r * ldd + c / 2, first_n((n + 1) / 2), pair16(ev, od));
        }
    }
}

/* Bp [kc/2 rounded up][N rounded up to NR]: rows k0..k0+kc of op(B), in pairs; the
 * pairs kp0..kp1 of them (threads pack a share each). */
static void pack_b(uint32_t *Bp, const float *B, size_t ldb, int transB, size_t k0, size_t kc,
                   size_t N, size_t kp0, size_t kp1) {
    const size_t NP = (N + NR - 1) / NR * NR;
    if (!transB) { /* rows k and k+1 are contiguous */
        const size_t rows = kc - 2 * kp0 < 2 * (kp1 - kp0) ? kc - 2 * kp0 : 2 * (kp1 - kp0);
        sc_bf16_pack_row_pairs(Bp + kp0 * NP, NP, B + (k0 + 2 * kp0) * ldb, ldb, rows, N);
    } else /* B stored [N][K]: the pair k, k+1 of column j is B[j][k], B[j][k+1] */
        for (size_t kp = kp0; kp < kp1; kp++) {
            const size_t k = k0 + 2 * kp;
            const int two = 2 * kp + 1 < kc;
            for (size_t j = 0; j < N; j++)
                Bp[kp * NP + j] = pair1(B[j * ldb + k], two ? B[j * ldb + k + 1] : 0.0f);
        }
    for (size_t kp = kp0; kp < kp1; kp++)
        for (size_t j = N; j < NP; j++) Bp[kp * NP + j] = 0;
}

/* Ap: the MR rows i0.. of A (fewer at the edge: zeros), columns k0..k0+kc, in pairs,
 * Ap[r][kp] (a row's (kc+1)/2 pairs contiguous). */
static void pack_a(uint32_t *Ap, const float *A, size_t lda, size_t i0, size_t rows, size_t k0,
                   size_t kc) {
    const size_t KP = (kc + 1) / 2;
    sc_bf16_pack_pairs_in_rows(Ap, KP, A + i0 * lda + k0, lda, rows, kc);
    memset(Ap + rows * KP, 0, (MR - rows) * KP * sizeof(uint32_t));
}

/* C[MR x NR] (+)= alpha * Ap . Bp over KP pairs; only rows < rows, columns < cols are
 * stored; first: C = beta * C + ..., else C += ... */
static void micro(float *C, size_t ldc, const uint32_t *Ap, size_t sr, size_t sk,
                  const uint32_t *Bp, size_t NP, size_t KP, size_t rows, size_t cols, float alpha,
                  float beta, int first) {
    /* every loop over the tile's rows unrolled, so that acc[r] is a register: indexed
     * by a variable (a loop to `rows`) the tile lived on the stack, stored back at every
     * pair (attention's short products ran 1.3x slower than float32 FMAs) */
    __m512 acc[MR][2];
UNROLL
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const __mmask16 m0 = first_n(cols), m1 = cols > 16 ? first_n(cols - 16) : 0;
    for (size_t kp = 0; kp < KP; kp++) { /* B's columns past cols are not read */
        const __m512bh b0 = (__m512bh)_mm512_maskz_loadu_epi32(m0, Bp + kp * NP);
        const __m512bh b1 = (__m512bh)_mm512_maskz_loadu_epi32(m1, Bp + kp * NP + 16);
UNROLL
        for (int r = 0; r < MR; r++) {
            const __m512bh a = (__m512bh)_mm512_set1_epi32((int)Ap[r * sr + kp * sk]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
        }
    }
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    const int load = !first || beta != 0.0f;
UNROLL
    for (int r = 0; r < MR; r++) {
        if ((size_t)r >= rows) break;
        float *c = C + r * ldc;
UNROLL
        for (int h = 0; h < 2; h++) {
            const __mmask16 m = h ? m1 : m0;
            __m512 v = alpha == 1.0f ? acc[r][h] : _mm512_mul_ps(acc[r][h], va);
            if (load) {
                const __m512 old = _mm512_maskz_loadu_ps(m, c + 16 * h);
                v = first ? _mm512_fmadd_ps(old, vb, v) : _mm512_add_ps(old, v);
            }
            _mm512_mask_storeu_ps(c + 16 * h, m, v);
        }
    }
}
#endif

#ifdef SC_HAVE_BF16
/* Small products on operands already packed in pairs (attention's blocks, one thread):
 * C[M,N] (+)= sum over KP pairs p of A(r,p) . B(p,c), with A(r,p) = A[r*sr + p*sk] and
 * B(p,c) = B[p*ldb + c]. A must have room for M rounded up to MR rows (read, their
 * sums dropped). */
void sc_bf16_mm(float *C, size_t ldc, const uint32_t *A, size_t sr, size_t sk, const uint32_t *B,
                size_t ldb, size_t M, size_t N, size_t KP, int overwrite) {
    for (size_t i0 = 0; i0 < M; i0 += MR)
        for (size_t j0 = 0; j0 < N; j0 += NR)
            micro(C + i0 * ldc + j0, ldc, A + i0 * sr, sr, sk, B + j0, ldb, KP,
                  M - i0 < MR ? M - i0 : MR, N - j0 < NR ? N - j0 : NR, 1.0f, 0.0f, overwrite);
}

/* Weights packed once for many products (sampling: every pixel multiplies the same
 * weights by a few rows): W [K,N] as B operand, its rows in pairs, [K/2 rounded up][N]
 * (micro reads no column past N). */
size_t sc_bf16_packed_words(size_t K, size_t N) { return (K + 1) / 2 * N; }

int sc_bf16_pack(uint32_t *Wp, const float *W, size_t K, size_t N) {
    if (!sc_bf16_supported()) return SC_ERR_UNSUPPORTED;
    sc_bf16_pack_row_pairs(Wp, N, W, N, K, N);
    return SC_OK;
}

/* C[M,N] = A[M,K] @ W + beta * C (beta 0 or 1: C not read when 0), W packed by
 * sc_bf16_pack, on this thread: sampling calls it from each thread's rows. */
int sc_bf16_gemm_packed(float *C, const float *A, const uint32_t *Wp, float beta, size_t M,
                        size_t N, size_t K) {
    if (!sc_bf16_supported()) return SC_ERR_UNSUPPORTED;
    uint32_t Ap[MR * (KC / 2)];
    const size_t NP = N;
    for (size_t k0 = 0; k0 < K || k0 == 0; k0 += KC) { /* K = 0: C = beta C */
        const size_t kc = K - k0 < KC ? K - k0 : KC, KP = (kc + 1) / 2;
        for (size_t i0 = 0; i0 < M; i0 += MR) {
            const size_t rows = M - i0 < MR ? M - i0 : MR;
            pack_a(Ap, A, K, i0, rows, k0, kc);
            for (size_t j0 = 0; j0 < N; j0 += NR)
                micro(C + i0 * N + j0, N, Ap, KP, 1, Wp + k0 / 2 * NP + j0, NP, KP, rows,
                      N - j0 < NR ? N - j0 : NR, 1.0f, beta, k0 == 0);
        }
        if (K == 0) break;
    }
    return SC_OK;
}
#else /* never called: the callers check sc_bf16_supported() first */
size_t sc_bf16_packed_words(size_t K, size_t N) { return (K + 1) / 2 * N; }
int sc_bf16_pack(uint32_t *Wp, const float *W, size_t K, size_t N) {
    (void)Wp, (void)W, (void)K, (void)N;
    return SC_ERR_UNSUPPORTED;
}
int sc_bf16_gemm_packed(float *C, const float *A, const uint32_t *Wp, float beta, size_t M,
                        size_t N, size_t K) {
    (void)C, (void)A, (void)Wp, (void)beta, (void)M, (void)N, (void)K;
    return SC_ERR_UNSUPPORTED;
}
void sc_bf16_pack_row_pairs(uint32_t *dst, size_t ldd, const float *X, size_t ldx, size_t rows,
                            size_t cols) {
    (void)dst, (void)ldd, (void)X, (void)ldx, (void)rows, (void)cols;
}
void sc_bf16_pack_pairs_in_rows(uint32_t *dst, size_t ldd, const float *X, size_t ldx,
                                size_t rows, size_t cols) {
    (void)dst, (void)ldd, (void)X, (void)ldx, (void)rows, (void)cols;
}
void sc_bf16_mm(float *C, size_t ldc, const uint32_t *A, size_t sr, size_t sk, const uint32_t *B,
                size_t ldb, size_t M, size_t N, size_t KP, int overwrite) {
    (void)C, (void)ldc, (void)A, (void)sr, (void)sk, (void)B, (void)ldb, (void)M, (void)N;
    (void)KP, (void)overwrite;
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
    uint32_t *Bp, *At; /* At: op(A) packed whole when transA, else NULL */
    size_t k0, kc, panels;
    size_t kfirst; /* the first block's k0: there C = beta * C + ... */
} Product;

/* The pairs [lo,hi) of the current block of B (and of A, when it is packed whole). */
static void pack_b_pairs(void *ctx, size_t lo, size_t hi) {
    const Product *a = ctx;
    pack_b(a->Bp, a->B, a->ldb, a->transB, a->k0, a->kc, a->N, lo, hi);
    if (a->At) { /* At[kp][i] for all M columns of the stored A: full-width rows */
        const size_t MP = a->panels * MR, rows = a->kc - 2 * lo < 2 * (hi - lo) ? a->kc - 2 * lo : 2 * (hi - lo);
        sc_bf16_pack_row_pairs(a->At + lo * MP, MP, a->A + (a->k0 + 2 * lo) * a->lda, a->lda, rows, a->M);
        for (size_t kp = lo; kp < hi; kp++)
            for (size_t i = a->M; i < MP; i++) a->At[kp * MP + i] = 0;
    }
}

/* Row panels [lo,hi) of C: each packs its A, then runs across all of C's columns. */
static void row_panels(void *ctx, size_t lo, size_t hi) {
    const Product *a = ctx;
    uint32_t Ap[MR * (KC / 2)];
    const size_t KP = (a->kc + 1) / 2, NP = (a->N + NR - 1) / NR * NR;
    if (a->At) { /* A packed already: a column panel of B (KP x 32 words) stays in L1
                  * while the thread's row panels pass under it */
        for (size_t j0 = 0; j0 < a->N; j0 += NR)
            for (size_t p = lo; p < hi; p++) {
                const size_t i0 = p * MR, rows = a->M - i0 < MR ? a->M - i0 : MR;
                micro(a->C + i0 * a->ldc + j0, a->ldc, a->At + i0, 1, a->panels * MR, a->Bp + j0, NP, KP,
                      rows, a->N - j0 < NR ? a->N - j0 : NR, a->alpha, a->beta, a->k0 == a->kfirst);
            }
        return;
    }
    for (size_t p = lo; p < hi; p++) {
        const size_t i0 = p * MR, rows = a->M - i0 < MR ? a->M - i0 : MR;
        pack_a(Ap, a->A, a->lda, i0, rows, a->k0, a->kc);
        for (size_t j0 = 0; j0 < a->N; j0 += NR)
            micro(a->C + i0 * a->ldc + j0, a->ldc, Ap, KP, 1, a->Bp + j0, NP, KP, rows,
                  a->N - j0 < NR ? a->N - j0 : NR, a->alpha, a->beta, a->k0 == a->kfirst);
    }
}
#endif

#ifdef SC_HAVE_BF16
/* Split-K for a long reduction (the weight gradients x^T dy: K = every position of
 * the batch, M and N the layer's widths). By panels, each of K/KC blocks would cost
 * two barriers (pack, then multiply) and a thread held up at one holds up both; here
 * SPLIT_PIECES stretches of K go round the threads, each packed and multiplied by
 * its thread alone, piece 0 into C (with beta), the others into partial sums added
 * in piece order: the same sums for any thread count. */
#define SPLIT_PIECES 8
typedef struct {
    Product base;
    size_t K, bp_words, words; /* one thread's packing buffer: words, B's the first bp_words */
    uint32_t *buf;
    float *part; /* [SPLIT_PIECES - 1][M][N] */
} Split;

static void split_pieces(void *ctx, size_t t, size_t nt) {
    const Split *s = ctx;
    const size_t M = s->base.M, N = s->base.N;
    for (size_t p = t; p < SPLIT_PIECES; p += nt) {
        const size_t lo = (s->K * p / SPLIT_PIECES) & ~(size_t)1;
        const size_t hi = p == SPLIT_PIECES - 1 ? s->K : (s->K * (p + 1) / SPLIT_PIECES) & ~(size_t)1;
        Product a = s->base;
        a.Bp = s->buf + t * s->words;
        a.At = a.Bp + s->bp_words;
        if (p) a.C = s->part + (p - 1) * M * N, a.ldc = N, a.beta = 0.0f;
        a.kfirst = lo;
        for (a.k0 = lo; a.k0 < hi; a.k0 += KC) {
            a.kc = hi - a.k0 < KC ? hi - a.k0 : KC;
            pack_b_pairs(&a, 0, (a.kc + 1) / 2);
            row_panels(&a, 0, a.panels);
        }
    }
}

/* Rows [lo,hi) of C += the partial sums, in piece order. */
static void split_add(void *ctx, size_t lo, size_t hi) {
    const Split *s = ctx;
    const size_t M = s->base.M, N = s->base.N;
    for (size_t i = lo; i < hi; i++)
        for (size_t p = 1; p < SPLIT_PIECES; p++) {
            const float *src = s->part + (p - 1) * M * N + i * N;
            float *dst = s->base.C + i * s->base.ldc;
            for (size_t j = 0; j < N; j++) dst[j] += src[j];
        }
}

/* a: the product (its Bp and At unset); each thread's buffer: bp_words for B, at_words for A */
static int bgemm_split_k(const Product *a, size_t K, size_t bp_words, size_t at_words) {
    const int nt = sc_get_num_threads() < SPLIT_PIECES ? sc_get_num_threads() : SPLIT_PIECES;
    Split s = {*a, K, bp_words, bp_words + at_words, NULL, NULL};
    s.buf = malloc((size_t)nt * s.words * sizeof(uint32_t));
    s.part = malloc((SPLIT_PIECES - 1) * a->M * a->N * sizeof(float));
    if (!s.buf || !s.part) {
        free(s.buf), free(s.part);
        return SC_ERR_NO_MEMORY;
    }
    sc_parallel(nt, split_pieces, &s);
    sc_parallel_for(a->M, nt, split_add, &s);
    free(s.buf), free(s.part);
    return SC_OK;
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
    if (K == 0) { /* no products: C = beta * C */
        for (size_t i = 0; i < M; i++)
            for (size_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return SC_OK;
    }
    const size_t NP = (N + NR - 1) / NR * NR, KPmax = ((K < KC ? K : KC) + 1) / 2;
    const size_t panels = (M + MR - 1) / MR;
    /* op(A) a transpose (the weight gradients, x^T dy): its block packed whole, with B,
     * in full-width rows; per panel of 8 columns the loads would be half vectors and
     * two panels would load each cache line (pack_row_pairs was ~7% of a `medium`
     * bf16 step that way, AMD EPYC Zen 5) */
    const size_t bp_words = KPmax * NP, at_words = transA ? KPmax * panels * MR : 0;
    Product a = {transA, transB, M, N, alpha, A, lda, B, ldb, beta, C, ldc, NULL, NULL, 0, 0, panels, 0};
    if (transA && K >= 8 * (M > N ? M : N) && K >= 4 * KC) {
        const int rc = bgemm_split_k(&a, K, bp_words, at_words);
        if (rc != SC_ERR_NO_MEMORY) return rc; /* else no room for the partial sums: by panels */
    }
    uint32_t *Bp = malloc((bp_words + at_words) * sizeof(uint32_t));
    if (!Bp) return SC_ERR_NO_MEMORY;
    a.Bp = Bp, a.At = transA ? Bp + bp_words : NULL;
    int nt = sc_get_num_threads();
    if ((size_t)nt > panels) nt = (int)panels;
    for (size_t k0 = 0; k0 < K; k0 += KC) {
        const size_t kc = K - k0 < KC ? K - k0 : KC;
        const int big = (double)M * N * kc > 1e6;
        a.k0 = k0, a.kc = kc;
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
