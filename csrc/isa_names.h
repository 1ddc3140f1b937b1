/* isa_names.h: the per-level names of the vectorised kernels.
 *
 * setup.py compiles each file of vectorised kernels (embedding.c, rmsnorm.c,
 * linear.c, mlp.c, attention.c, decode.c, xent.c, adamw.c, muon.c,
 * sample.c) once per vector
 * level, with that level's flags and -DSC_ISA_SUFFIX=_avx512 / _avx2 /
 * _baseline. simcore.h then includes this file, so that every kernel name in
 * that translation unit, its definition and its calls to other kernels alike,
 * becomes the level's own (attention_forward -> attention_forward_avx2): a
 * level's code only ever calls its own level. dispatch.c defines the plain
 * names, which forward to the level chosen at run time.
 */
#ifndef SIMCORE_ISA_NAMES_H
#define SIMCORE_ISA_NAMES_H
#define SC_ISA_CAT_(a, b) a##b
#define SC_ISA_CAT(a, b) SC_ISA_CAT_(a, b)
#define SC_ISA_NAME(f) SC_ISA_CAT(f, SC_ISA_SUFFIX)

#define posenc_init SC_ISA_NAME(posenc_init)
#define embedding_forward SC_ISA_NAME(embedding_forward)
#define embedding_backward SC_ISA_NAME(embedding_backward)
#define embedding_above_forward SC_ISA_NAME(embedding_above_forward)
#define embedding_above_backward SC_ISA_NAME(embedding_above_backward)
#define embedding_class_forward SC_ISA_NAME(embedding_class_forward)
#define embedding_class_backward SC_ISA_NAME(embedding_class_backward)
#define rmsnorm_forward SC_ISA_NAME(rmsnorm_forward)
#define rmsnorm_backward SC_ISA_NAME(rmsnorm_backward)
#define linear_forward SC_ISA_NAME(linear_forward)
#define linear_backward SC_ISA_NAME(linear_backward)
#define silu_forward SC_ISA_NAME(silu_forward)
#define silu_backward SC_ISA_NAME(silu_backward)
#define mlp_forward SC_ISA_NAME(mlp_forward)
#define mlp_backward SC_ISA_NAME(mlp_backward)
#define attention_scratch_floats SC_ISA_NAME(attention_scratch_floats)
#define attention_forward SC_ISA_NAME(attention_forward)
#define attention_backward SC_ISA_NAME(attention_backward)
#define kv_cache_write SC_ISA_NAME(kv_cache_write)
#define attention_decode_scratch_floats SC_ISA_NAME(attention_decode_scratch_floats)
#define attention_decode SC_ISA_NAME(attention_decode)
#define block_decode_scratch_floats SC_ISA_NAME(block_decode_scratch_floats)
#define block_decode SC_ISA_NAME(block_decode)
#define sample_tokens SC_ISA_NAME(sample_tokens)
#define xent_forward SC_ISA_NAME(xent_forward)
#define xent_backward SC_ISA_NAME(xent_backward)
#define grad_sumsq SC_ISA_NAME(grad_sumsq)
#define adamw_update SC_ISA_NAME(adamw_update)
#define muon_scratch_floats SC_ISA_NAME(muon_scratch_floats)
#define muon_update SC_ISA_NAME(muon_update)
#endif
