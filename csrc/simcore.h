/* simcore kernels: one file per layer, each a forward/backward pair.
 *
 * Conventions (the same in every file):
 *  - Arguments: outputs first, then const inputs and weights, then sizes
 *    (B, T, C, NH, ...). Each pointer is commented IN / OUT / INOUT with its shape.
 *  - All arrays are row-major, contiguous float32 unless said otherwise.
 *    Weights are used as x @ W (input dimension first).
 *  - Forward kernels overwrite their outputs (or accumulate when a `beta`/
 *    `accumulate` argument says so). Backward kernels ADD into gradient buffers
 *    (+=): calling one twice doubles the gradients.
 *  - No malloc, no exit(), no globals except two process-wide settings: the BLAS
 *    pointer (blas.c) and the vector level (dispatch.c). Scratch space is passed
 *    in. Errors come back as SC_* return codes.
 *  - The files of vectorised kernels are compiled once per vector level; the
 *    names below are the dispatching entry points (dispatch.c, isa_names.h).
 */
#ifndef SIMCORE_H
#define SIMCORE_H
#include <stddef.h>
#include <stdint.h>
#ifdef SC_ISA_SUFFIX /* a kernel file compiled for one vector level (setup.py) */
#include "isa_names.h"
#endif

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

/* ---- dispatch.c: the vector level the kernels below run at ---------------- */
enum { SC_ISA_BASELINE = 0, SC_ISA_AVX2 = 1, SC_ISA_AVX512 = 2, SC_ISA_COUNT = 3 };
int sc_isa_best(void);      /* the highest level this CPU runs */
int sc_isa_get(void);       /* the level in use (the best, until sc_isa_set) */
int sc_isa_set(int level);  /* SC_ERR_UNSUPPORTED above sc_isa_best() */

/* ---- blas.c: the one BLAS entry point ------------------------------------ */
enum { SC_BLAS_F77 = 0, SC_BLAS_CBLAS = 1 };
int sc_blas_set(void *fn, int kind);          /* register sgemm_ or cblas_sgemm */
/* Row-major C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C. */
int sc_sgemm(int transA, int transB, size_t M, size_t N, size_t K, float alpha,
             const float *A, size_t lda, const float *B, size_t ldb, float beta,
             float *C, size_t ldc);
int sc_get_num_threads(void);                 /* OpenMP threads our loops use */
void sc_set_num_threads(int n);

/* ---- embedding.c ---------------------------------------------------------- */
void posenc_init(float *pe, size_t T, size_t C, size_t side);
void embedding_forward(float *out, const uint8_t *tokens, const float *wte,
                       const float *pe, size_t B, size_t T, size_t C);
void embedding_backward(float *dwte, const float *dout, const uint8_t *tokens,
                        size_t B, size_t T, size_t C);

void embedding_above_forward(float *out, const uint8_t *tokens, const float *wab, size_t shift,
                             size_t B, size_t T, size_t C);
void embedding_above_backward(float *dwab, const float *dout, const uint8_t *tokens, size_t shift,
                              size_t B, size_t T, size_t C);
void embedding_class_forward(float *out, const uint8_t *labels, const float *wcl,
                             size_t B, size_t T, size_t C);
void embedding_class_backward(float *dwcl, const float *dout, const uint8_t *labels,
                              size_t B, size_t T, size_t C);

/* ---- rmsnorm.c ------------------------------------------------------------ */
void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w,
                     size_t N, size_t C);
void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                      const float *w, const float *rstd, size_t N, size_t C);

/* ---- linear.c ------------------------------------------------------------- */
int linear_forward(float *out, const float *x, const float *w, float beta,
                   size_t N, size_t Cin, size_t Cout);
int linear_backward(float *dx, float *dw, const float *dout, const float *x,
                    const float *w, size_t N, size_t Cin, size_t Cout);

/* ---- mlp.c ---------------------------------------------------------------- */
void silu_forward(float *out, const float *x, size_t n);
void silu_backward(float *dx, const float *dout, const float *x, size_t n);
int mlp_forward(float *out, float *h_pre, float *h_act, const float *x,
                const float *w1, const float *w2, float beta,
                size_t N, size_t C, size_t H, size_t Cout);
int mlp_backward(float *dx, float *dw1, float *dw2, float *dh, float *h_act,
                 const float *dout, const float *x, const float *h_pre,
                 const float *w1, const float *w2,
                 size_t N, size_t C, size_t H, size_t Cout);

/* ---- attention.c ---------------------------------------------------------- */
size_t attention_scratch_floats(size_t T, size_t C, size_t NH);
int attention_forward(float *out, float *lse, float *scratch, const float *q,
                      const float *k, const float *v, size_t B, size_t T,
                      size_t C, size_t NH, int nthreads);
int attention_backward(float *dq, float *dk, float *dv, float *scratch,
                       const float *dout, const float *q, const float *k,
                       const float *v, const float *out, const float *lse,
                       size_t B, size_t T, size_t C, size_t NH, int nthreads);
/* ---- decode.c: sampling, one position at a time with a key/value cache ---- */
typedef struct { /* one transformer block's weights, as x @ W */
    const float *norm1, *wq, *wk, *wv, *wo; /* norm1/norm2: [C] or NULL (no norm) */
    const float *norm2, *w1, *w2;           /* w1 [C,H], w2 [H,C]; the rest [C,C] */
} BlockWeights;
enum { SC_KV_F32 = 0, SC_KV_F16 = 1 }; /* the cache's elements: float, or half bits (uint16_t) */
int kv_cache_write(void *kcache, void *vcache, int kv_type, const float *k, const float *v,
                   size_t pos, size_t B, size_t Tmax, size_t C, size_t NH);
size_t attention_decode_scratch_floats(size_t Tmax);
int attention_decode(float *out, float *scratch, const float *q, const void *kcache,
                     const void *vcache, int kv_type, size_t pos, size_t B, size_t Tmax,
                     size_t C, size_t NH, int nthreads);
size_t block_decode_scratch_floats(size_t B, size_t C, size_t H, size_t Tmax, int nthreads);
int block_decode(float *x, void *kcache, void *vcache, int kv_type, float *scratch,
                 const BlockWeights *w, size_t pos, size_t B, size_t Tmax, size_t C,
                 size_t H, size_t NH, int nthreads);
void sample_tokens(uint8_t *out, double *work, const float *logits, const double *u,
                   double temperature, int top_k, size_t B, size_t V);

/* ---- xent.c --------------------------------------------------------------- */
void xent_forward(float *losses, float *lse, const float *logits,
                  const uint8_t *tokens, size_t B, size_t T, size_t V);
void xent_backward(float *dlogits, const float *logits, const float *lse,
                   const uint8_t *tokens, float scale, size_t B, size_t T,
                   size_t V);

/* ---- adamw.c -------------------------------------------------------------- */
double grad_sumsq(const float *g, size_t n);
void adamw_update(float *params, float *m, float *v, const float *grads,
                  float lr, float beta1, float beta2, float eps,
                  float weight_decay, float grad_scale, long step, size_t n);

/* ---- muon.c --------------------------------------------------------------- */
size_t muon_scratch_floats(size_t R, size_t Cc);
int muon_update(float *p, float *buf, const float *grad, float *scratch, size_t R, size_t Cc,
                float lr, float momentum, float weight_decay, float grad_scale, int ns_steps);

#endif
