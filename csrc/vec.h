/* vec.h: width-generic float vectors for the hand-vectorised loops.
 *
 * Every file that includes this is compiled once per vector level with that
 * level's flags (setup.py; csrc/dispatch.c picks one at run time), the way
 * PyTorch builds its kernels once per CPU_CAPABILITY. VW, the floats in one
 * vector, follows the flags of the translation unit:
 *   AVX-512 (x86-64-v4)   VW = 16  one zmm, 32 registers
 *   AVX2 + FMA (v3)       VW = 8   one ymm, 16 registers
 *   baseline (SSE2)       VW = 4   one xmm, 16 registers
 *   NEON (AArch64)        VW = 4   one q register, 32 registers
 *   (another target's baseline: VW = 4, whatever its compiler makes of it)
 * A vector type is always exactly one machine register, so a register tile
 * sized in vectors (say 8 accumulators) means the same register pressure at
 * every level. (The earlier design used a fixed 16-float type: on AVX2 each
 * value became two ymm halves, the 4x32 attention tile needed 16 accumulators
 * plus loads in a 16-register file, and the loops spilled to the stack.)
 */
#ifndef SIMCORE_VEC_H
#define SIMCORE_VEC_H
#include "simcore.h" /* UNROLL */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX2__)
#define VW 8
#else
#define VW 4
#endif

#if defined(__GNUC__) && !defined(__clang__) /* GCC's note on vector arguments' ABI */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float vf __attribute__((vector_size(VW * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VW * 4), aligned(4)));
/* Loads and stores go through a may_alias view of the floats (an unaligned vmovups).
 * (Not memcpy: for 32-byte vectors GCC's generic tuning copies in 16-byte pieces
 * through a stack slot, which put a store/reload in every AVX2 inner loop.) */
typedef float vf_mem __attribute__((vector_size(VW * 4), aligned(4), may_alias));
#define INLINE static inline __attribute__((always_inline))

INLINE vf vload(const float *p) { return *(const vf_mem *)p; }
INLINE void vstore(float *p, vf v) { *(vf_mem *)p = v; }
INLINE vf splat(float x) { return (vf){0} + x; }
INLINE vf vselect(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }
INLINE vf vmax(vf a, vf b) { return vselect(a > b, a, b); }
/* x rounded to the nearest bfloat16 (ties to even), kept as a float32: a product of two
 * such numbers is exact in float32 (bf16.c's reference rounding; NaN left as it is). */
typedef uint32_t vu __attribute__((vector_size(VW * 4), aligned(4)));
INLINE vf vround_bf16(vf x) {
    const vu b = (vu)x;
    const vu r = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
    return vselect(x == x, (vf)r, x);
}
INLINE void round_bf16(float *x, size_t n) {
    size_t i = 0;
    for (; i + VW <= n; i += VW) vstore(x + i, vround_bf16(vload(x + i)));
    for (; i < n; i++) {
        uint32_t b;
        memcpy(&b, x + i, 4);
        if (x[i] == x[i]) b = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
        memcpy(x + i, &b, 4);
    }
}
INLINE float hsum(vf v) { float s = 0; for (int i = 0; i < VW; i++) s += v[i]; return s; }
INLINE float hmax(vf v) { float m = v[0]; for (int i = 1; i < VW; i++) m = v[i] > m ? v[i] : m; return m; }

/* exp(x) for x <= 0 (scores minus their row max or log-sum-exp): 2^n * p(r) with
 * Cephes' degree-6 polynomial, ~1 ulp; x < -87 (and -inf, the causal mask)
 * gives exactly 0. n is rounded with the 1.5 * 2^23 trick so no floor() is
 * needed and the whole thing stays in vector registers. */
INLINE vf vexp(vf x) {
    const vi dead = x < splat(-87.0f);
    x = vmax(x, splat(-87.0f));
    const vf magic = splat(12582912.0f);
    vf n = (x * 1.44269504088896341f + magic) - magic;
    vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    return vselect(dead, splat(0.0f), p * (vf)e);
}

INLINE float dot(const float *a, const float *b, size_t d) {
    size_t e = 0;
    float s = 0.0f;
    if (d >= VW) {
        vf acc = {0};
        for (; e + VW <= d; e += VW) acc += vload(a + e) * vload(b + e);
        s = hsum(acc);
    }
    for (; e < d; e++) s += a[e] * b[e];
    return s;
}

/* sigmoid(x) = 1 / (1 + exp(-x)), built on exp(-|x|) so the exponent never
 * overflows; for x < 0 it is e / (1 + e). */
INLINE vf vsigmoid(vf x) {
    const vi neg = x < splat(0.0f);
    const vf e = vexp(vselect(neg, x, -x));
    const vf r = 1.0f / (1.0f + e);
    return vselect(neg, e * r, r);
}

INLINE float sigmoidf_(float x) { return vsigmoid(splat(x))[0]; }

#endif
