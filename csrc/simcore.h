/* simcore kernels: one file per layer, each a forward/backward pair.
 *
 * Conventions (the same in every file):
 *  - Arguments: outputs first, then const inputs and weights, then sizes
 *    (B, T, C, NH, ...). Each pointer is commented IN / OUT / INOUT with its shape.
 *  - All arrays are row-major, contiguous float32 unless said otherwise.
 *    Weights are used as x @ W (input dimension first).
 *  - Forward kernels write their outputs; those named INOUT add into them (the
 *    pixel-above and class embeddings, a `beta` of 1). Backward kernels ADD into
 *    gradient buffers (+=): calling one twice doubles the gradients.
 *  - No exit() and no allocation in the kernels: scratch space is passed in.
 *    (blas.c alone mallocs, for the partial sums of a product split along K that it
 *    can do without: on failure it splits by panels instead.) Errors come back as
 *    SC_* return codes.
 *  - Three process-wide settings, no other globals: the BLAS pointer (blas.c), the
 *    vector level (dispatch.c) and the threads (parallel.c: the count, and in a build
 *    without OpenMP our pool, which OpenMP would keep as globals).
 *  - The kernels of kernels.def are compiled once per vector level; the names
 *    declared here are the dispatching entry points (dispatch.c).
 */
#ifndef SIMCORE_H
#define SIMCORE_H
#include <stddef.h>
#include <stdint.h>

/* What every int-returning function returns: SC_OK, or what was wrong. */
enum {
    SC_OK = 0,
    SC_ERR_NO_BLAS = 1,     /* no sgemm registered (sc_blas_set never called) */
    SC_ERR_TOO_LARGE = 2,   /* a size does not fit the BLAS integer type */
    SC_ERR_THREADS = 3,     /* a thread count below 1 */
    SC_ERR_POSITION = 4,    /* a position outside the key/value cache */
    SC_ERR_CACHE_LEN = 5,   /* a cache length that is not a multiple of the key block */
    SC_ERR_UNSUPPORTED = 6, /* a vector level this CPU does not run */
    SC_ERR_BAD_ARG = 7,     /* an unknown enum value (BLAS interface, vector level, cache type) */
    SC_ERR_RANGE = 8,       /* a key or value a float16 cache cannot hold (|x| >= 65520, inf, NaN) */
    SC_ERR_NO_MEMORY = 9,   /* an allocation failed (internal: callers fall back) */
};

/* Loops over the vectors of a register tile have a constant count; they must be
 * unrolled whole, so that the tile's arrays become registers (vec.h's tiles, bf16.c's). */
#if defined(__clang__) /* clang ignores GCC's spelling: its loops stayed rolled, tiles in memory */
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif

/* ---- dispatch.c: the vector level the kernels below run at ---------------- */
/* x86-64's levels lowest first, then AArch64's; a build has its target's (sc_isa_built) */
enum { SC_ISA_BASELINE = 0, SC_ISA_AVX2 = 1, SC_ISA_AVX512 = 2, SC_ISA_NEON = 3, SC_ISA_COUNT = 4 };
int sc_isa_built(int level); /* 1 if this build has that level */
int sc_isa_best(void);      /* the highest level this CPU runs */
int sc_isa_get(void);       /* the level in use (the best, until sc_isa_set) */
int sc_isa_set(int level);  /* SC_ERR_UNSUPPORTED above sc_isa_best() or not built */

/* ---- blas.c: the one BLAS entry point ------------------------------------ */
enum { SC_BLAS_F77 = 0, SC_BLAS_CBLAS = 1 };
int sc_blas_set(void *fn, int kind);          /* register sgemm_ or cblas_sgemm */
/* Row-major C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C. */
int sc_sgemm(int transA, int transB, size_t M, size_t N, size_t K, float alpha,
             const float *A, size_t lda, const float *B, size_t ldb, float beta,
             float *C, size_t ldc);
/* The precision of a product's operands: float32, or bfloat16 rounded to nearest even
 * (float32 sums either way; bf16.c). */
enum { SC_PREC_F32 = 0, SC_PREC_BF16 = 1 };
int sc_gemm(int prec, int transA, int transB, size_t M, size_t N, size_t K, float alpha,
            const float *A, size_t lda, const float *B, size_t ldb, float beta, float *C,
            size_t ldc);

/* ---- parallel.c: the threads our loops use, the same in every thread (parallel.h
 * has the regions) ---- */
int sc_get_num_threads(void);
void sc_set_num_threads(int n);
const char *sc_threading_layer(void);         /* "openmp", or "pthreads" (our pool) */

/* ---- bf16.c: bfloat16 products (AVX512_BF16), built once ------------------ */
int sc_bf16_supported(void);                      /* this CPU has AVX512_BF16 */
void bf16_round(uint16_t *out, const float *x, size_t n); /* nearest even, NaN quiet */
/* Row-major C[M,N] = alpha * bf16(op(A))[M,K] @ bf16(op(B))[K,N] + beta * C, float32 sums. */
int sc_bgemm(int transA, int transB, size_t M, size_t N, size_t K, float alpha,
             const float *A, size_t lda, const float *B, size_t ldb, float beta,
             float *C, size_t ldc);
/* The pieces of attention's bf16 block products (bf16.c says how they are laid out):
 * operands packed as 32-bit pairs of bf16 numbers, pairs of rows or pairs within rows,
 * and the product of packed operands. */
void sc_bf16_pack_row_pairs(uint32_t *dst, size_t ldd, const float *X, size_t ldx, size_t rows,
                            size_t cols);
void sc_bf16_pack_pairs_in_rows(uint32_t *dst, size_t ldd, const float *X, size_t ldx,
                                size_t rows, size_t cols);
void sc_bf16_mm(float *C, size_t ldc, const uint32_t *A, size_t sr, size_t sk, const uint32_t *B,
                size_t ldb, size_t M, size_t N, size_t KP, int overwrite);
/* Weights packed once (sampling): W [K,N] into sc_bf16_packed_words(K, N) words; then
 * C[M,N] = bf16(A)[M,K] @ bf16(W) + beta * C (beta 0 or 1) on the calling thread. */
size_t sc_bf16_packed_words(size_t K, size_t N);
int sc_bf16_pack(uint32_t *Wp, const float *W, size_t K, size_t N);
int sc_bf16_gemm_packed(float *C, const float *A, const uint32_t *Wp, float beta, size_t M,
                        size_t N, size_t K);

/* ---- block.c: one transformer block's tensors, named as in checkpoints ---- */
typedef struct { /* weights, as x @ W: the norm gains [C] or NULL (no norm), w1 [C,H], w2 [H,C], the rest [C,C] */
    const float *attn_norm, *wq, *wk, *wv, *wo;
    const float *mlp_norm, *w1, *w2;
} BlockWeights;
typedef struct { /* their gradients, the same shapes (the gains NULL when the weights' are) */
    float *attn_norm, *wq, *wk, *wv, *wo;
    float *mlp_norm, *w1, *w2;
} BlockGrads;
typedef struct { /* sampling in bfloat16: the products' weights packed by sc_bf16_pack */
    const uint32_t *wq, *wk, *wv, *wo, *w1, *w2;
} BlockPacked;

/* ---- decode.c: the key/value cache of sampling --------------------------- */
enum { SC_KV_F32 = 0, SC_KV_F16 = 1 }; /* the cache's elements: float, or half bits (uint16_t) */
enum { SC_KV_BLOCK = 16 };             /* positions per key block; cache lengths are multiples */

/* ---- the per-level kernels (kernels.def) ---------------------------------
 * Inside a file compiled for one level (setup.py passes -DSC_ISA_SUFFIX=_avx2,
 * ...), each declaration carries an asm label, so that the kernel's symbol is the
 * level's own (attention_forward is emitted and called as attention_forward_avx2):
 * a level's code only ever calls its own level, and dispatch.c defines the plain
 * names. Elsewhere (dispatch.c, the binding) the plain names are declared. */
#define SC_STR_(x) #x
#define SC_STR(x) SC_STR_(x)
#ifdef SC_ISA_SUFFIX
#define SC_LEVEL_SYMBOL(name) __asm__(SC_STR(__USER_LABEL_PREFIX__) #name SC_STR(SC_ISA_SUFFIX))
#else
#define SC_LEVEL_SYMBOL(name)
#endif
#define SC_KERNEL(ret, name, params, args) ret name params SC_LEVEL_SYMBOL(name);
#define SC_PROC(name, params, args) void name params SC_LEVEL_SYMBOL(name);
#include "kernels.def"
#undef SC_KERNEL
#undef SC_PROC

#endif
