# Declarations of csrc/simcore.h (and the kernels of csrc/kernels.def, which it
# declares) for the Cython binding (_kernels.pyx).
from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef extern from "simcore.h" nogil:
    enum:
        SC_OK
        SC_ERR_NO_BLAS
        SC_ERR_TOO_LARGE
        SC_ERR_THREADS
        SC_ERR_POSITION
        SC_ERR_CACHE_LEN
        SC_ERR_UNSUPPORTED
        SC_ERR_BAD_ARG
        SC_ERR_RANGE
        SC_ERR_NO_MEMORY
        SC_KV_F32
        SC_KV_F16
        SC_KV_BLOCK
        SC_PREC_F32
        SC_PREC_BF16
        SC_BLAS_F77
        SC_BLAS_CBLAS
        SC_ISA_BASELINE
        SC_ISA_AVX2
        SC_ISA_AVX512
        SC_ISA_NEON
        SC_ISA_COUNT

    int sc_isa_built(int level)
    int sc_isa_best()
    int sc_isa_get()
    int sc_isa_set(int level)

    int sc_blas_set(void *fn, int kind)
    int sc_sgemm(int transA, int transB, size_t M, size_t N, size_t K, float alpha,
                 const float *A, size_t lda, const float *B, size_t ldb, float beta,
                 float *C, size_t ldc)
    int sc_gemm(int prec, int transA, int transB, size_t M, size_t N, size_t K, float alpha,
                const float *A, size_t lda, const float *B, size_t ldb, float beta,
                float *C, size_t ldc)
    int sc_bf16_supported()
    void bf16_round(uint16_t *out, const float *x, size_t n)
    int sc_bgemm(int transA, int transB, size_t M, size_t N, size_t K, float alpha,
                 const float *A, size_t lda, const float *B, size_t ldb, float beta,
                 float *C, size_t ldc)
    size_t sc_bf16_packed_words(size_t K, size_t N)
    int sc_bf16_pack(uint32_t *Wp, const float *W, size_t K, size_t N)
    int sc_bf16_gemm_packed(float *C, const float *A, const uint32_t *Wp, float beta, size_t M,
                            size_t N, size_t K)
    int sc_get_num_threads()
    void sc_set_num_threads(int n)
    const char *sc_threading_layer()

    void posenc_init(float *pe, size_t T, size_t C, size_t side)
    void embedding_forward(float *out, const uint8_t *tokens, const float *wte,
                           const float *pe, size_t B, size_t T, size_t C)
    void embedding_backward(float *dwte, const float *dout, const uint8_t *tokens,
                            size_t B, size_t T, size_t C)
    void embedding_above_forward(float *out, const uint8_t *tokens, const float *wab,
                                 size_t shift, size_t B, size_t T, size_t C)
    void embedding_above_backward(float *dwab, const float *dout, const uint8_t *tokens,
                                  size_t shift, size_t B, size_t T, size_t C)
    void embedding_class_forward(float *out, const uint8_t *labels, const float *wcl,
                                 size_t B, size_t T, size_t C)
    void embedding_class_backward(float *dwcl, const float *dout, const uint8_t *labels,
                                  size_t B, size_t T, size_t C)
    void embedding_step(float *x, const uint8_t *tokens, const uint8_t *above,
                        const uint8_t *labels, const float *wte, const float *pe_t,
                        const float *wab, const float *wcl, size_t N, size_t C)

    void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w,
                         size_t N, size_t C)
    void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                          const float *w, const float *rstd, size_t N, size_t C)

    int linear_forward(float *out, const float *x, const float *w, float beta, int prec,
                       size_t N, size_t Cin, size_t Cout)
    int linear_backward(float *dx, float *dw, const float *dout, const float *x,
                        const float *w, int prec, size_t N, size_t Cin, size_t Cout)

    void silu_forward(float *out, const float *x, size_t n)
    void silu_backward(float *dx, const float *dout, const float *x, size_t n)
    int mlp_forward(float *out, float *h_pre, float *h_act, const float *x,
                    const float *w1, const float *w2, float beta, int prec,
                    size_t N, size_t C, size_t H, size_t Cout)
    int mlp_backward(float *dx, float *dw1, float *dw2, float *dh, float *h_act,
                     const float *dout, const float *x, const float *h_pre,
                     const float *w1, const float *w2, int prec,
                     size_t N, size_t C, size_t H, size_t Cout)

    size_t attention_scratch_floats(size_t T, size_t C, size_t NH)
    int attention_forward(float *out, float *lse, float *scratch, const float *q,
                          const float *k, const float *v, int prec, size_t B, size_t T,
                          size_t C, size_t NH, int nthreads)
    int attention_backward(float *dq, float *dk, float *dv, float *scratch,
                           const float *dout, const float *q, const float *k,
                           const float *v, const float *out, const float *lse, int prec,
                           size_t B, size_t T, size_t C, size_t NH, int nthreads)
    int kv_cache_write(void *kcache, void *vcache, int kv_type, const float *k, const float *v,
                       size_t pos, size_t B, size_t Tmax, size_t C, size_t NH)
    int kv_cache_fill(void *kcache, void *vcache, int kv_type, const float *k, const float *v,
                      size_t T, size_t B, size_t Tmax, size_t C, size_t NH)
    size_t attention_decode_scratch_floats(size_t Tmax)
    int attention_decode(float *out, float *scratch, const float *q, const void *kcache,
                         const void *vcache, int kv_type, size_t pos, size_t B, size_t Tmax,
                         size_t C, size_t NH, int nthreads)

    ctypedef struct BlockWeights:
        const float *attn_norm
        const float *wq
        const float *wk
        const float *wv
        const float *wo
        const float *mlp_norm
        const float *w1
        const float *w2
    ctypedef struct BlockGrads:
        float *attn_norm
        float *wq
        float *wk
        float *wv
        float *wo
        float *mlp_norm
        float *w1
        float *w2
    ctypedef struct BlockPacked:
        const uint32_t *wq
        const uint32_t *wk
        const uint32_t *wv
        const uint32_t *wo
        const uint32_t *w1
        const uint32_t *w2
    size_t block_acts_floats(int has_norm, size_t B, size_t T, size_t C, size_t H, size_t NH)
    size_t block_scratch_floats(size_t B, size_t T, size_t C, size_t H, size_t NH, int nthreads)
    int block_forward(float *xout, float *acts, float *scratch, const float *x,
                      const BlockWeights *w, int prec, size_t B, size_t T, size_t C, size_t H,
                      size_t NH, int nthreads)
    int block_backward(float *dx, const BlockGrads *g, float *scratch, const float *x,
                       const float *acts, const BlockWeights *w, int prec, size_t B, size_t T,
                       size_t C, size_t H, size_t NH, int nthreads)
    int block_prefill(float *xout, void *kcache, void *vcache, int kv_type, float *acts,
                      float *scratch, const float *x, const BlockWeights *w, size_t B, size_t T,
                      size_t Tmax, size_t C, size_t H, size_t NH, int nthreads)
    size_t block_decode_scratch_floats(size_t B, size_t C, size_t H, size_t Tmax, int nthreads)
    int block_decode(float *x, void *kcache, void *vcache, int kv_type, float *scratch,
                     const BlockWeights *w, const BlockPacked *packed, size_t pos, size_t B,
                     size_t Tmax, size_t C, size_t H, size_t NH, int nthreads)
    void sample_tokens(uint8_t *out, double *work, const float *logits, const double *u,
                       double temperature, int top_k, size_t B, size_t V)

    void xent_forward(float *losses, float *lse, const float *logits,
                      const uint8_t *tokens, size_t B, size_t T, size_t V)
    void xent_backward(float *dlogits, const float *logits, const float *lse,
                       const uint8_t *tokens, float scale, size_t B, size_t T,
                       size_t V)

    double grad_sumsq(const float *g, size_t n)
    void adamw_update(float *params, float *m, float *v, const float *grads,
                      float lr, float beta1, float beta2, float eps,
                      float weight_decay, float grad_scale, long step, size_t n)

    size_t muon_scratch_floats(size_t R, size_t Cc)
    int muon_update(float *p, float *buf, const float *grad, float *scratch, size_t R,
                    size_t Cc, float lr, float momentum, float weight_decay, float grad_scale,
                    int ns_steps)
